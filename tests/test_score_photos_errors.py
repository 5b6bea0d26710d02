"""fiqa-score on hostile input: a model the engine refuses, unreadable bundles and folders, outputs that would
clobber each other or cannot be written. Each is said in one line naming the problem and the fix, with exit
status 2 (nothing judged) or 1 (some photos could not be), never a traceback or a silent skip."""
from __future__ import annotations

import logging
import os

import cv2
import pytest
from fs_faults import deny_reading

import fiqa_sdk.score_photos as score_photos
from fiqa_sdk import load_sample
from fiqa_sdk.score_photos import main


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "grace_hopper.jpg"
    cv2.imwrite(str(path), load_sample("grace_hopper"))
    return path


def _no_model(*args, **kwargs):
    raise AssertionError("the Scorer was built before the problem was found")


def test_a_model_the_engine_refuses_is_an_error_naming_bundle_file_and_engine(photo, tmp_path, capsys, caplog):
    from bundle_fixtures import newer_opset_bundle

    bundle = newer_opset_bundle(tmp_path / "newer")
    assert main([str(photo), "--bundle", str(bundle), "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fiqa-score: error: bundle {bundle}: model file student_qdq.onnx on backend "
                          "onnxruntime: onnxruntime ") and "Opset 99" in err and "Traceback" not in err
    with caplog.at_level(logging.WARNING, logger="fiqa_sdk.bundle"):  # auto: on to the next engine, saying so
        assert main([str(photo), "--bundle", str(bundle)]) == 0
    assert "1 photos, 1 faces judged" in capsys.readouterr().out
    assert f"bundle {bundle} " in caplog.text and "backend onnxruntime unavailable for student_fp32.onnx" in caplog.text


@pytest.mark.parametrize("case", ["unreadable folder", "unreadable model", "name too long"])
def test_a_bundle_that_cannot_be_read_is_an_error_not_a_traceback(photo, tmp_path, capsys, monkeypatch, case):
    import shutil

    from fiqa_sdk.bundle import BUNDLES_DIR, DEFAULT_BUNDLES

    bundle = shutil.copytree(BUNDLES_DIR / DEFAULT_BUNDLES["cpu"], tmp_path / "bundle")
    if case == "unreadable folder":
        deny_reading(monkeypatch, bundle)
    elif case == "unreadable model":
        deny_reading(monkeypatch, bundle / "student_fp32.onnx")
    else:
        bundle = tmp_path / ("b" * 300)
    assert main([str(photo), "--bundle", str(bundle)]) == 2
    err = capsys.readouterr().err
    why = "File name too long" if case == "name too long" else "Permission denied"
    assert err.startswith(f"fiqa-score: error: bundle {bundle}: cannot read ") and f"({why})" in err


def _photos(tmp_path):
    top = tmp_path / "photos"
    (top / "locked").mkdir(parents=True)
    cv2.imwrite(str(top / "grace_hopper.jpg"), load_sample("grace_hopper"))
    cv2.imwrite(str(top / "locked" / "astronaut.jpg"), load_sample("astronaut"))
    return top


def test_an_unreadable_sub_folder_is_named_and_fails_the_run(tmp_path, capsys, monkeypatch):
    top = _photos(tmp_path)
    deny_reading(monkeypatch, top / "locked")
    assert main([str(top), "--backend", "onnxruntime"]) == 1
    out, err = capsys.readouterr()
    assert f"fiqa-score: warning: cannot read folder {top / 'locked'} (Permission denied), so its photos are not " \
           "judged; fix its permissions" in err
    assert "grace_hopper.jpg" in out and "astronaut.jpg" not in out and "1 photos, 1 faces judged" in out
    with pytest.raises(OSError, match=r"cannot read folder .*locked \(Permission denied\)"):  # no list: raised
        list(score_photos.find_images([top]))


def test_an_unreadable_top_folder_is_named_as_such(tmp_path, capsys, monkeypatch):
    top = _photos(tmp_path)
    deny_reading(monkeypatch, top)
    monkeypatch.setattr(score_photos, "Scorer", _no_model)
    assert main([str(top)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fiqa-score: error: cannot read folder {top} (Permission denied)")
    assert "no photos found" not in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root lists folders whatever their mode")
def test_a_sub_folder_without_permissions_is_named(tmp_path, capsys):
    top = _photos(tmp_path)
    (top / "locked").chmod(0)
    try:
        assert main([str(top), "--backend", "onnxruntime"]) == 1
    finally:
        (top / "locked").chmod(0o755)
    assert f"cannot read folder {top / 'locked'} (Permission denied)" in capsys.readouterr().err


def test_a_photo_name_too_long_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(score_photos, "Scorer", _no_model)
    long_name = tmp_path / ("p" * 300 + ".jpg")
    assert main([str(long_name)]) == 2
    assert capsys.readouterr().err == f"fiqa-score: error: {long_name} cannot be read (File name too long)\n"


def test_outputs_are_compared_resolved(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "x.csv").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        main([str(photo), "--csv", "sub/../x.csv", "--json", "x.csv", "--force"])
    assert e.value.code == 2 and "--csv and --json name the same file" in capsys.readouterr().err
    (tmp_path / "link.json").symlink_to(tmp_path / "x.csv")
    with pytest.raises(SystemExit):
        main([str(photo), "--csv", "x.csv", "--json", "link.json", "--force"])
    assert "name the same file" in capsys.readouterr().err and (tmp_path / "x.csv").read_text() == "keep me"


@pytest.mark.parametrize("case", ["folder", "file", "name too long"])
def test_an_output_that_cannot_be_written_is_refused_before_scoring(photo, tmp_path, capsys, monkeypatch, case):
    monkeypatch.setattr(score_photos, "Scorer", _no_model)
    out = tmp_path / "ro" / "rows.csv"
    out.parent.mkdir()
    if case == "name too long":
        out = tmp_path / ("o" * 300 + ".csv")
    else:  # as a non-root user meets it (or anyone on a read-only filesystem): os.access says no
        denied = out.parent if case == "folder" else out
        out.write_text("old rows")
        real_access = os.access
        monkeypatch.setattr(score_photos.os, "access",
                            lambda path, mode, **kw: False if os.fspath(path) == str(denied) and mode & os.W_OK
                            else real_access(path, mode, **kw))
    with pytest.raises(SystemExit) as e:
        main([str(photo), "--csv", str(out), "--force"])
    err = capsys.readouterr().err
    why = "cannot be used (File name too long)" if case == "name too long" else "is not writable by this user"
    assert e.value.code == 2 and f"--csv {out}: {why}" in err
