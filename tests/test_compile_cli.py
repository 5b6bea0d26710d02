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
