"""fiqa-compile refuses bad input early, with a message naming the problem, and loses nothing."""
from __future__ import annotations

import json
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
                                   ["--distill-epochs", "0"], ["--distill-versions", "0"]])
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


@pytest.mark.parametrize("flags, message", [
    (["--target", "cpu", "--distill-epochs", "3"], "--distill-epochs only applies with --faces"),
    (["--target", "cpu", "--distill-versions", "1"], "--distill-versions only applies with --faces"),
    (["--target", "cpu", "--student-arch", "student_nano"], "--student-arch only applies with --faces"),
    (["--target", "android-arm64", "--calibration-method", "entropy"],
     "--calibration-method tunes the Q/DQ INT8 ONNX, which --target android-arm64"),
    (["--target", "raspberry-pi", "--keep-head-float"], "--keep-head-float tunes the Q/DQ INT8 ONNX"),
    (["--target", "cpu", "--precision", "fp32", "--calibration-method", "minmax"], "--precision fp32 does not ship"),
])
def test_options_that_would_have_no_effect_are_refused(tmp_path, capsys, flags, message):
    """Ignoring them would also record them in the manifest's options as if they had shaped the bundle."""
    assert main([*flags, "--out", str(tmp_path / "b")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_student_is_verified_only_against_the_teachers_it_was_distilled_from(tmp_path, capsys):
    from fiqa_compile.student_store import EMBEDDED_STUDENT

    student = tmp_path / "student"
    shutil.copytree(EMBEDDED_STUDENT, student)
    info = json.loads((student / "student.json").read_text())
    info["teachers"]["perceptual"]["sha256"] = "0" * 64  # distilled from another DSL-FIQA
    (student / "student.json").write_text(json.dumps(info))
    assert main(["--target", "cpu", "--out", str(tmp_path / "b"), "--student", str(student)]) == 2
    err = capsys.readouterr().err
    assert "distilled from a perceptual teacher with sha256 000000000000" in err and "--perceptual-teacher" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["teacher", "student"])
@pytest.mark.parametrize("damage", ["not json", "unknown model"])
def test_malformed_metadata_is_refused_naming_the_file(tmp_path, capsys, kind, damage):
    from fiqa_compile.student_store import EMBEDDED_STUDENT

    src = embedded_teacher_dirs()["utility"] if kind == "teacher" else EMBEDDED_STUDENT
    folder = tmp_path / kind
    shutil.copytree(src, folder)
    meta = folder / f"{kind}.json"
    if damage == "not json":
        meta.write_text("{'model': oops")
    else:
        info = json.loads(meta.read_text())
        info["model" if kind == "teacher" else "student"] = "vit_fiqa_xl"
        meta.write_text(json.dumps(info))
    flag = "--utility-teacher" if kind == "teacher" else "--student"
    assert main(["--target", "cpu", "--out", str(tmp_path / "b"), flag, str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(meta) in err
    assert ("is not a" in err) if damage == "not json" else ("'vit_fiqa_xl', which this fiqa-sdk does not know" in err)


def test_an_undefined_rank_agreement_fails_verification():
    """A collapsed model scores every face alike: its SRCC is NaN, which must fail the gate, not slip past '<'."""
    from fiqa_compile.compiler import verification_failures

    def v(fp32, teacher):
        return {"onnx_qdq": {"vs_fp32": {"utility": {"srcc": 0.999}, "perceptual": {"srcc": fp32}},
                             "vs_teacher": {"utility": {"srcc": 0.93}, "perceptual": {"srcc": teacher}}}}

    assert verification_failures(v(0.999, 0.96), 0.98, 0.80) == []
    failures = verification_failures(v(float("nan"), float("nan")), 0.98, 0.80)
    assert failures == ["onnx_qdq perceptual: SRCC vs fp32 student undefined: the score is constant",
                        "onnx_qdq perceptual: SRCC vs teacher undefined: the score is constant"]
    assert verification_failures(v(0.97, 0.5), 0.98, 0.80) == ["onnx_qdq perceptual: SRCC vs fp32 student 0.9700 < 0.98",
                                                               "onnx_qdq perceptual: SRCC vs teacher 0.5000 < 0.8"]
    assert verification_failures(v(float("nan"), float("nan")), -1, -1) == []  # -1 turns the gates off


def test_a_score_learned_from_its_own_labels_is_not_gated_on_the_teacher():
    """A student that learned recognition labels disagrees with the old teacher by design: that is reported, not a
    failure; its agreement with the fp32 student and the other score's with its teacher are still gated."""
    from fiqa_compile.compiler import own_targets, verification_failures

    v = {"onnx_qdq": {"vs_fp32": {"utility": {"srcc": 0.97}, "perceptual": {"srcc": 0.999}},
                      "vs_teacher": {"utility": {"srcc": 0.50}, "perceptual": {"srcc": 0.70}}}}
    mine = own_targets({"utility_target": "recognition utility", "scores": []})
    assert mine == frozenset({"utility"})
    assert own_targets({"scores": []}) == frozenset()
    assert verification_failures(v, 0.98, 0.80, mine) == ["onnx_qdq utility: SRCC vs fp32 student 0.9700 < 0.98",
                                                          "onnx_qdq perceptual: SRCC vs teacher 0.7000 < 0.8"]
    assert "onnx_qdq utility: SRCC vs teacher 0.5000 < 0.8" in verification_failures(v, 0.98, 0.80)


def test_an_edc_of_few_people_is_marked_indicative_only():
    from fiqa_compile.report import MIN_EDC_PEOPLE, edc_caveat

    few = edc_caveat(3)
    assert few is not None and "3 people" in few and "fiqa-eval --faces" in few
    assert edc_caveat(MIN_EDC_PEOPLE - 1) is not None
    assert edc_caveat(MIN_EDC_PEOPLE) is None and edc_caveat(500) is None


def test_report_json_is_strict_json():
    from fiqa_compile.report import finite_or_null

    doc = finite_or_null({"srcc": float("nan"), "n": np.int64(3), "x": [np.float32(0.5), float("inf")]})
    assert doc == {"srcc": None, "n": 3, "x": [0.5, None]}
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


def test_the_calibration_method_is_chosen_on_calibration_pool_faces_not_on_the_verification_faces():
    from fiqa_compile.compiler import method_choice_faces

    pool = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    chosen = np.arange(0, 100, 2)  # the calibration set: even rows
    picked = method_choice_faces(pool, chosen, n=64)[:, 0, 0, 0]
    assert len(picked) == 64 and set(picked[:50]) == set(range(1, 100, 2))  # every left-out face first
    assert np.array_equal(np.sort(method_choice_faces(pool, chosen, n=20)[:, 0, 0, 0]) % 2, np.ones(20))


def test_a_verification_set_too_small_to_gate_on_is_refused():
    from fiqa_compile.compiler import CompileError, Faces, check_verification_faces

    def faces(n, people, degraded):
        return Faces(np.zeros((n, 112, 112, 3), np.uint8), np.arange(n) % people, np.array(["x"] * n),
                     (np.arange(n) < degraded).astype(float))

    check_verification_faces(faces(60, 3, 40), "ok")
    with pytest.raises(CompileError, match=r"6 faces of 1 people \(need at least 30 faces of 2 people\)"):
        check_verification_faces(faces(6, 1, 4), "held-out people of tiny/")
    check_verification_faces(faces(6, 1, 4), "gates off", gated=False)
    with pytest.raises(CompileError, match="0 of 60 degraded"):
        check_verification_faces(faces(60, 3, 0), "no degradations", gated=False)


def test_gate_thresholds_separate_clean_faces_from_heavily_degraded_ones():
    """Youden's J on the verification faces: the accept threshold sits between the clean and the bad scores."""
    from fiqa_compile.compiler import Faces, gate_thresholds

    rng = np.random.default_rng(0)
    severity = np.repeat([0.0, 0.3, 0.8], 40)
    utility = np.where(severity == 0, rng.uniform(62, 90, 120), np.where(severity < 0.7, 50.0, rng.uniform(10, 38, 120)))
    perceptual = np.where(severity == 0, rng.uniform(71, 95, 120), rng.uniform(5, 45, 120))
    faces = Faces(np.zeros((120, 112, 112, 3), np.uint8), np.arange(120) % 4, np.array(["x"] * 120), severity)
    t = gate_thresholds(np.stack([utility, perceptual], 1), faces)
    clean, bad = severity == 0, severity >= 0.7
    for name, s in (("utility", utility), ("perceptual", perceptual)):
        assert s[bad].max() < t[f"{name}_accept"] <= s[clean].min(), (name, t)
        assert t[f"{name}_release"] == t[f"{name}_accept"] - 10


@pytest.mark.parametrize("mirror", [False, True])
def test_verification_scores_the_fp32_student_as_the_device_runs_the_artifact(tmp_path, mirror):
    """student_z (torch) and run_artifact (the device runtime) must agree, with and without mirror averaging,
    or the vs-fp32 gate would compare two different functions."""
    from bundle_fixtures import TinyQualityNet, export_onnx

    from fiqa_compile.compiler import run_artifact, student_z
    from fiqa_sdk import load_sample

    face = load_sample("tom_hanks")
    crops = np.stack([np.roll(face, s, axis=1) for s in range(-6, 7, 2)])  # 7 different 112x112 crops
    net = TinyQualityNet(seed=0).eval()
    onnx_path = export_onnx(net, tmp_path / "net.onnx")
    torch_z = student_z(net, crops, mirror_average=mirror)
    device_z, _ = run_artifact(onnx_path, "onnx", crops, mirror_average=mirror)
    np.testing.assert_allclose(device_z, torch_z, atol=1e-4)
    one_pass = student_z(net, crops)
    mirrored = student_z(net, np.ascontiguousarray(crops[:, :, ::-1]))
    np.testing.assert_allclose(torch_z, (one_pass + mirrored) / 2 if mirror else one_pass, atol=1e-5)
    assert not np.allclose(one_pass, mirrored, atol=1e-3)  # the net is not mirror-symmetric: the test can tell


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """/proc passes a permission check as root but takes no files; a full disk is found before minutes of work."""
    import fiqa_compile.compiler as compiler

    assert main(["--target", "cpu", "--out", "/proc/fiqa-sdk-test/bundle"]) == 2
    assert "a test file in /proc could not be created" in capsys.readouterr().err

    class Usage:
        free = 5_000_000

    monkeypatch.setattr(compiler.shutil, "disk_usage", lambda path: Usage())
    assert main(["--target", "cpu", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "5 MB free" in err and "free some space or choose another --out" in err
    assert not (tmp_path / "b").exists()
