"""fiqa-demo: runs on given photos, writes what it says, and refuses bad input clearly."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fiqa_sdk.demo import main
from fiqa_sdk.samples import sample_path


def test_demo_on_given_photos_with_both_detectors(tmp_path, capsys):
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert main([str(sample_path("astronaut")), str(noise), "--out", str(out), "--detector", "retinaface,dlib",
                 "--backend", "opencv", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "retinaface/opencv" in table and "dlib/dlib-hog" in table
    report = json.loads((out / "detections.json").read_text())
    assert [(r["image"], r["detector"], len(r["faces"])) for r in report] == [
        ("astronaut", "retinaface", 1), ("noise", "retinaface", 0), ("astronaut", "dlib", 1), ("noise", "dlib", 0)]
    crop = cv2.imread(str(out / "astronaut_retinaface_face0.png"))
    assert crop.shape == (112, 112, 3)
    assert cv2.imread(str(out / "noise_dlib_annotated.jpg")).shape == (120, 160, 3)
    assert not list(out.glob("noise_*_face*.png"))


def test_demo_rejects_unknown_detector_and_unreadable_files(tmp_path, capsys):
    assert main(["--detector", "mtcnn", "--out", str(tmp_path)]) == 2
    assert "unknown detector" in capsys.readouterr().err
    bogus = tmp_path / "not-an-image.jpg"
    bogus.write_text("hello")
    with pytest.raises(SystemExit, match="not an image OpenCV can decode"):
        main([str(bogus), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file"):
        main([str(tmp_path / "missing.jpg"), "--out", str(tmp_path)])


def test_demo_keeps_same_named_photos_apart(tmp_path):
    a, b = tmp_path / "a" / "face.png", tmp_path / "b" / "face.png"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(sample_path("tom_hanks").read_bytes())
    assert main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").glob("*_face0.png"))
    assert names == ["face-2_retinaface_face0.png", "face_retinaface_face0.png"]
