"""The device side must stay light: no torch, no compile package, no sample-shipping packages imported.

Checked in a fresh interpreter, because this test process itself has torch loaded by other tests.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["torch", "fiqa_compile", "litert_torch", "tensorflow", "jax", "insightface", "matplotlib", "skimage",
         "face_recognition_models", "pkg_resources", "retinaface"]


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


def _heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in HEAVY)


def test_the_probe_does_see_an_import():
    """Control: the probe notices a heavy import when there is one."""
    assert "torch" in _modules_after("import torch")


def test_importing_device_packages_imports_nothing_heavy():
    mods = _modules_after("import fiqa_sdk, fiqa_runtimes")
    assert "fiqa_sdk" in mods and "fiqa_runtimes" in mods
    assert _heavy(mods) == []


@pytest.mark.parametrize("detector", ["retinaface", "dlib"])
def test_detecting_faces_in_a_sample_imports_nothing_heavy(detector):
    mods = _modules_after(
        "import fiqa_sdk\n"
        f"det = fiqa_sdk.create_detector({detector!r})\n"
        "faces = det(fiqa_sdk.load_sample('grace_hopper'))\n"
        "assert len(faces) == 1, faces\n"
        "crop = fiqa_sdk.align_face(fiqa_sdk.load_sample('grace_hopper'), faces[0].landmarks)\n"
        "fiqa_sdk.sample_images()\n")
    assert _heavy(mods) == []


def test_calibration_datasets_import_no_torch():
    mods = _modules_after("import fiqa_calibration.datasets as d\nd.SampleFaces()\nd.find_lfw_dev()")
    assert _heavy(mods) == []


def test_demo_entry_point_runs_without_torch(tmp_path):
    out = tmp_path / "demo"
    mods = _modules_after(f"from fiqa_sdk.demo import main\nassert main(['--out', {str(out)!r}]) == 0")
    assert _heavy(mods) == []
    report = json.loads((out / "detections.json").read_text())
    assert {r["image"]: len(r["faces"]) for r in report} == {"t1": 6, "tom_hanks": 1, "grace_hopper": 1,
                                                             "astronaut": 1}
    assert len(list(out.glob("*_face*.png"))) == 9 and len(list(out.glob("*_annotated.jpg"))) == 4
