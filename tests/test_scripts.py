"""The development scripts that make committed or measured artifacts, on small stand-ins built from sample photos."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from fiqa_sdk import create_detector, load_sample

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lfw_background_faces_reframes_the_other_people_of_a_photo(tmp_path, capsys):
    """A 250x250 LFW-style photo whose filed person is in the centre and two other people off-centre."""
    group = load_sample("t1")  # six people around a table
    photo = cv2.resize(group[100:600, 0:500], (250, 250), interpolation=cv2.INTER_AREA)
    faces = tmp_path / "faces" / "Some_Person"
    faces.mkdir(parents=True)
    cv2.imwrite(str(faces / "Some_Person_0001.jpg"), photo)
    out = tmp_path / "plus"
    assert _script("lfw_background_faces").main([str(tmp_path / "faces"), str(out)]) == 0
    linked = out / "Some_Person" / "Some_Person_0001.jpg"
    assert linked.is_symlink() and linked.resolve() == (faces / "Some_Person_0001.jpg").resolve()
    added = sorted((out / "Some_Person").glob("*_bg*.jpg"))
    assert len(added) >= 2, capsys.readouterr().out
    det = create_detector("retinaface", max_side=320, refine_landmarks=0)
    for path in added:  # each is framed as LFW frames its people: the face centred, eyes ~50 px apart
        frame = cv2.imread(str(path))
        centre = min(det(frame), key=lambda d: np.linalg.norm((d.box[:2] + d.box[2:]) / 2 - 125))
        assert np.linalg.norm((centre.box[:2] + centre.box[2:]) / 2 - 125) < 12 and 40 < centre.size < 60
    assert _script("lfw_background_faces").main([str(tmp_path / "faces"), str(out)]) == 2  # never into a full folder
    assert "is not empty" in capsys.readouterr().err
