"""fiqa-compile refuses bad input early, with a message naming the problem, and loses nothing."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from fiqa_compile.cli import main
from fiqa_compile.teachers import embedded_teacher_dirs


def test_unknown_target_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--target", "toaster"])
    assert e.value.code == 2 and "invalid choice: 'toaster'" in capsys.readouterr().err


def test_existing_bundle_is_kept_without_force(tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text('{"schema_version": 1}')
    assert main(["--target", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a bundle" in err and "--force" in err
    assert (out / "manifest.json").read_text() == '{"schema_version": 1}'


def test_corrupt_teacher_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "teacher"
    shutil.copytree(embedded_teacher_dirs()["utility"], bad)
    data = bytearray((bad / "teacher.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "teacher.pt").write_bytes(bytes(data))
    assert main(["--target", "cpu", "--out", str(tmp_path / "b"), "--utility-teacher", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "teacher.pt" in err
    assert not (tmp_path / "b").exists()


def test_missing_teacher_checkpoint_is_refused(tmp_path, capsys):
    assert main(["--target", "cpu", "--out", str(tmp_path / "b"), "--perceptual-teacher", str(tmp_path / "nope")]) == 2
    assert "teacher.json and teacher.pt" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["empty", "noise"])
def test_calibration_folder_without_faces_is_refused(tmp_path, capsys, content):
    folder = tmp_path / "calib"
    folder.mkdir()
    if content == "noise":
        rng = np.random.default_rng(0)
        for i in range(3):
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    assert main(["--target", "cpu", "--out", str(tmp_path / "b"), "--calibration", str(folder)]) == 2
    err = capsys.readouterr().err
    assert ("holds no images" in err) if content == "empty" else ("no faces found" in err)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("flags, message", [
    (["--target", "android-arm64", "--precision", "fp32"], "--target android-arm64 does not run"),
    (["--target", "cpu", "--faces", "FACES", "--student-arch", "bogus"], "'bogus' is not a student architecture"),
    (["--target", "cpu", "--faces", "MISSING"], "is not a folder of face photos"),
    (["--target", "cpu", "--calibration", "MISSING"], "is not a folder of face photos"),
    (["--target", "cpu", "--utility-teacher", "PERCEPTUAL"], "is a perceptual teacher"),
])
def test_options_that_cannot_work_are_refused_before_any_work(tmp_path, capsys, flags, message):
    """Each of these used to fail only after minutes of aligning, scoring or quantising (or with a traceback)."""
    faces = tmp_path / "faces"
    faces.mkdir()
    subst = {"FACES": str(faces), "MISSING": str(tmp_path / "missing"),
             "PERCEPTUAL": str(embedded_teacher_dirs()["perceptual"])}
    out, distill_dir = tmp_path / "b", tmp_path / "d"
    args = [subst.get(f, f) for f in flags] + ["--out", str(out)]
    if "--faces" in flags:
        args += ["--distill-dir", str(distill_dir)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not distill_dir.exists()


@pytest.mark.parametrize("flags", [["--threads", "0"], ["--calibration-size", "50"], ["--min-srcc-fp32", "1.5"],
                                   ["--distill-epochs", "0"]])
def test_impossible_numbers_are_refused_when_the_options_are_read(tmp_path, capsys, flags):
    try:
        code = main(["--target", "cpu", "--out", str(tmp_path / "b"), *flags])
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    assert code == 2
    assert flags[0] in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_output_folders_that_would_fail_at_the_end_are_refused_at_the_start(tmp_path, capsys):
    """A non-bundle folder, and --force on a bundle with the user's files beside it: nothing is touched."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["--target", "cpu", "--out", str(mine), "--force"]) == 2
    assert "not a bundle" in capsys.readouterr().err
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"models": [], "files": {}}')
    (bundle / "capture.jpg").write_bytes(b"jpeg")
    assert main(["--target", "cpu", "--out", str(bundle), "--force"]) == 2
    assert "its manifest does not list (capture.jpg)" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "mine" and (bundle / "capture.jpg").read_bytes() == b"jpeg"
