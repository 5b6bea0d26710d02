"""Shared fixtures: real photos shipped by pip packages and session-wide detectors (model loads are slow-ish).

Sample photos are required, not skipped: ``scripts/setup.sh`` installs the packages that ship them, and a
missing one should fail loudly with the pip command rather than hide untested code.
"""
from __future__ import annotations

import numpy as np
import pytest

from fiqa_sdk import create_detector, load_sample

PORTRAITS = ("grace_hopper", "tom_hanks", "astronaut")
ALL_SAMPLES = ("t1",) + PORTRAITS


@pytest.fixture(scope="session")
def samples() -> dict[str, np.ndarray]:
    return {name: load_sample(name) for name in ALL_SAMPLES}


@pytest.fixture(scope="session")
def retinaface_ort():
    return create_detector("retinaface", backend="onnxruntime")


@pytest.fixture(scope="session")
def retinaface_cv():
    return create_detector("retinaface", backend="opencv")


@pytest.fixture(scope="session")
def dlib_detector():
    return create_detector("dlib")


@pytest.fixture(scope="session")
def retina_dets(samples, retinaface_ort) -> dict[str, list]:
    """RetinaFace (ONNX Runtime) detections on every sample photo, computed once."""
    return {name: retinaface_ort(img) for name, img in samples.items()}


@pytest.fixture(scope="session")
def dlib_dets(samples, dlib_detector) -> dict[str, list]:
    return {name: dlib_detector(img) for name, img in samples.items()}


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_by_eyes(det, candidates):
    """The candidate whose eye midpoint is nearest ``det``'s (robust to different box conventions)."""
    mid = det.landmarks[:2].mean(0)
    return min(candidates, key=lambda c: float(np.linalg.norm(c.landmarks[:2].mean(0) - mid)))
