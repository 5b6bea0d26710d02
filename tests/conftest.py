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


# ------------------------------------------------------------------------------------------- device tests
# Test files that run with the device distribution alone (fiqa-sdk + its engines, no torch, no fiqa-compile, no
# fiqa_calibration): they get the ``device`` marker, and ``pytest --device-only`` collects nothing else (the other
# files import torch or the host packages at import time). scripts/device_tests.sh runs them in a fresh environment
# holding only the device wheel; tests/test_packaging.py checks the list names real files.
DEVICE_TEST_FILES = frozenset({
    "test_capture_io.py", "test_default_bundle.py", "test_demo.py", "test_detection.py", "test_device_imports.py",
    "test_frames.py", "test_gate.py", "test_measures.py", "test_runtimes.py", "test_score_photos.py",
    "test_sources.py", "test_tensorrt_backend.py", "test_thread_safety.py", "test_tracking.py",
})
# Tests in those files that need a host package or torch all the same ("file::test").
NOT_DEVICE_TESTS = frozenset({"test_device_imports.py::test_the_probe_does_see_an_import",
                              "test_device_imports.py::test_calibration_datasets_import_no_torch"})


def pytest_addoption(parser):
    parser.addoption("--device-only", action="store_true", default=False,
                     help="collect only the tests marked 'device' (DEVICE_TEST_FILES in tests/conftest.py)")


def pytest_ignore_collect(collection_path, config):
    if (config.getoption("--device-only") and collection_path.suffix == ".py"
            and collection_path.name.startswith("test_") and collection_path.name not in DEVICE_TEST_FILES):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    device, host = [], []
    for item in items:
        name = item.path.name
        if name in DEVICE_TEST_FILES and f"{name}::{getattr(item, 'originalname', item.name)}" not in NOT_DEVICE_TESTS:
            item.add_marker(pytest.mark.device)
            device.append(item)
        else:
            host.append(item)
    if config.getoption("--device-only") and host:
        config.hook.pytest_deselected(items=host)
        items[:] = device
