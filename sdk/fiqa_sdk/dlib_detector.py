"""A second, independent face detector: dlib's HOG + linear SVM frontal detector with the iBUG-68 landmarks.

Why a second detector: it shares no training data or architecture with RetinaFace, so it is a cross-check
for landmark accuracy (tests, label building) and a CPU fallback. Its 68 points also give eyebrows, jaw and
lip contours, which DSL-FIQA-style landmark guidance needs and RetinaFace's five points do not.

The landmark models are the ``.dat`` files of the ``face_recognition_models`` wheel (0.3.0). We locate them
with :func:`importlib.util.find_spec` instead of importing the package, whose ``__init__`` needs
``pkg_resources`` (gone from recent setuptools).
"""
from __future__ import annotations

import importlib
import importlib.util
import threading
from pathlib import Path

import cv2
import numpy as np

from fiqa_sdk.detection import Detection, Detector, DetectorUnavailable, register_detector
from fiqa_sdk.frames import to_bgr

INSTALL_HINT = "pip install dlib-bin face_recognition_models==0.3.0  (fiqa-sdk's 'dlib' extra)"

# iBUG-300W 68-point indices, in image order (the subject's right eye appears on the image's left).
EYE_LEFT_IMG = slice(36, 42)
EYE_RIGHT_IMG = slice(42, 48)
NOSE_TIP = 30
MOUTH_LEFT_IMG = 48
MOUTH_RIGHT_IMG = 54

_MODEL_FILES = {68: "shape_predictor_68_face_landmarks.dat", 5: "shape_predictor_5_face_landmarks.dat"}
_predictors: dict[str, object] = {}
_lock = threading.Lock()


def _dlib():
    try:
        return importlib.import_module("dlib")
    except ImportError as exc:
        raise DetectorUnavailable(f"the dlib detector needs the 'dlib' module ({exc}); install it with: "
                                  f"{INSTALL_HINT}") from exc


def landmark_model_path(points: int = 68) -> Path:
    """Path of a dlib shape-predictor ``.dat`` shipped by ``face_recognition_models``, without importing it."""
    if points not in _MODEL_FILES:
        raise ValueError(f"dlib landmark models exist for {sorted(_MODEL_FILES)} points, not {points}")
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(f"dlib landmarks need the 'face_recognition_models' package; install it with: "
                                  f"{INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / _MODEL_FILES[points]
    if not path.is_file():
        raise DetectorUnavailable(f"{path} is missing; reinstall with: pip install --force-reinstall "
                                  "face_recognition_models==0.3.0")
    return path


def _predictor(points: int = 68):
    """Load a shape predictor once per process (the 68-point file is ~100 MB; loading takes ~1 s)."""
    path = str(landmark_model_path(points))
    with _lock:
        if path not in _predictors:
            _predictors[path] = _dlib().shape_predictor(path)
        return _predictors[path]


def _rgb(frame_bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))


def _landmarks68_rgb(rgb: np.ndarray, box) -> np.ndarray:
    dlib = _dlib()
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {list(box)} is empty; expected x1 < x2 and y1 < y2")
    rect = dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))
    shape = _predictor(68)(rgb, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def dlib_landmarks68(frame_bgr: np.ndarray, box) -> np.ndarray:
    """The 68 iBUG landmarks (68x2 float32, frame pixels) of the face in ``box`` (x1, y1, x2, y2).

    The predictor was trained on dlib HOG boxes (tight: brows to chin). Boxes from other detectors work
    (the cascade re-fits the shape), but points are most accurate with a box of that style.
    """
    return _landmarks68_rgb(_rgb(to_bgr(frame_bgr)), box)


def five_from_68(points68: np.ndarray) -> np.ndarray:
    """Reduce 68 iBUG points to our 5 (image-left eye, image-right eye, nose tip, left / right mouth corner)."""
    p = np.asarray(points68, dtype=np.float32).reshape(68, 2)
    return np.stack([p[EYE_LEFT_IMG].mean(0), p[EYE_RIGHT_IMG].mean(0), p[NOSE_TIP],
                     p[MOUTH_LEFT_IMG], p[MOUTH_RIGHT_IMG]]).astype(np.float32)


class DlibDetector(Detector):
    """dlib HOG frontal face detector; five landmarks derived from the 68-point shape predictor.

    ``score`` is the SVM margin (unbounded, > ``score_threshold``; ~0-3 on real faces), not a probability.
    At dlib's default threshold 0 it also fires on some face-like clutter (margins ~0.1-0.2); RetinaFace
    stays the default detector, this one is the independent cross-check.
    The HOG window is 80x80 px: ``upsample=0`` finds faces from ~80 px, each extra upsample halves that
    at ~4x the cost. ``max_side`` optionally downscales large frames before the HOG pass (landmarks are
    always fitted at full resolution). ``extra``: ``landmarks68`` and ``subdetector`` (dlib's index:
    0 frontal, 1 left profile-ish, 2 right, 3/4 frontal rotated).
    """

    name = "dlib"

    def __init__(self, upsample: int = 0, score_threshold: float = 0.0, max_side: int | None = None):
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        if max_side is not None and max_side < 80:
            raise ValueError(f"max_side={max_side} is smaller than dlib's 80 px HOG window; use None or >= 80")
        self._hog = _dlib().get_frontal_face_detector()
        # dlib's detector keeps the frame it scans inside itself and lets go of the GIL while scanning: two threads
        # in it at once corrupt memory. (The shape predictor keeps nothing between calls and needs no lock.)
        self._hog_lock = threading.Lock()
        _predictor(68)  # fail now, not on the first frame, when the model package is missing
        self.upsample = int(upsample)
        self.score_threshold = float(score_threshold)
        self.max_side = max_side
        self.backend_name = "dlib-hog"

    def _detect_bgr(self, frame: np.ndarray) -> list[Detection]:
        rgb = _rgb(frame)
        h, w = rgb.shape[:2]
        scale = 1.0 if self.max_side is None else min(1.0, self.max_side / max(h, w))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                     interpolation=cv2.INTER_AREA)
        with self._hog_lock:
            rects, scores, kinds = self._hog.run(small, self.upsample, self.score_threshold)
        out = []
        for rect, score, kind in sorted(zip(rects, scores, kinds), key=lambda t: -t[1]):
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32) / scale
            pts68 = _landmarks68_rgb(rgb, box)
            out.append(Detection(box=box, landmarks=five_from_68(pts68), score=float(score),
                                 extra={"landmarks68": pts68, "subdetector": int(kind)}))
        return out


register_detector("dlib", DlibDetector)
