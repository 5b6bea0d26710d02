"""fiqa-compile's shipped default faces are what the sample photos give, and the default compile uses them alone."""
from __future__ import annotations

import numpy as np

from fiqa_calibration.calibration_set import sample_pool
from fiqa_calibration.shipped_faces import FACES_DIR, SHIPPED_PHOTOS, canvases, shipped_pool


def test_every_shipped_face_is_listed_and_documented():
    files = sorted(p.name for p in FACES_DIR.glob("*.png"))
    assert files == sorted(f"{photo}_{i}.png" for photo, n in SHIPPED_PHOTOS.items() for i in range(n))
    readme = (FACES_DIR / "README.md").read_text()
    assert all(f"`{photo}`" in readme for photo in SHIPPED_PHOTOS)  # each photo's provenance and licence


def test_shipped_pool_is_the_pool_the_photos_give():
    """Same canvases (to a grey level: another CPU's ONNX Runtime may round a landmark differently), same seeds,
    same degradations, in the same order, as detecting and aligning the photos with the default compile's settings."""
    from fiqa_sdk.detection import create_detector

    kw = dict(severities=(0.3, 0.9), seed=5)
    shipped = shipped_pool(**kw)
    detected = sample_pool(**kw, detector=create_detector("retinaface", backend="onnxruntime", max_side=640,
                                                          refine_landmarks=False))
    assert len(shipped.faces) == len(detected.faces) == 9 * (1 + 12 * 2)
    for field in ("kinds", "severity", "person"):
        assert np.array_equal(getattr(shipped, field), getattr(detected, field)), field
    diff = np.abs(shipped.faces.astype(np.int16) - detected.faces)
    assert diff.mean() < 0.05 and np.percentile(diff, 99.9) <= 2, (diff.mean(), diff.max())


def test_default_compile_faces_come_from_the_shipped_canvases(monkeypatch):
    """No photo package and no detector: the default compile must not reach for either."""
    import fiqa_sdk.detection
    import fiqa_sdk.samples
    from fiqa_compile.compiler import default_faces

    def refuse(*a, **k):
        raise AssertionError("the default compile loaded a sample photo or a detector")

    monkeypatch.setattr(fiqa_sdk.samples, "load_sample", refuse)
    monkeypatch.setattr(fiqa_sdk.detection, "create_detector", refuse)
    calib, verify = default_faces(0)
    assert set(calib.person) == {str(i) for i in range(6)} and len(calib.crops) == 6 * (1 + 12 * 6)
    assert len(set(verify.person)) == 3 and len(verify.crops) == 3 * (1 + 12 * 8)
    assert np.array_equal(calib.crops[0], canvases("t1")[0][24:136, 24:136])

