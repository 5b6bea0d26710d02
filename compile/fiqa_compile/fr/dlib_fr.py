"""dlib's ResNet face-recognition model (face_recognition_models 0.3.0): our real, pretrained FR model.

It measures *utility* — how well a sample will be recognised — for the certainty-ratio labels and
for error-versus-discard evaluation. The model files are located on disk without importing
``face_recognition_models`` (its ``__init__`` needs ``pkg_resources``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("dlib FR needs the 'face_recognition_models' package: pip install 'fiqa-sdk[dlib]'")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibFaceRecognizer:
    """128-d embeddings from dlib's ResNet (LFW 99.38%), given a frame and 68 (or 5) dlib landmarks."""

    name = "dlib-resnet-v1"

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as e:
            raise RuntimeError("dlib FR needs dlib: pip install 'fiqa-sdk[dlib]' (dlib-bin wheel)") from e
        self._dlib = dlib
        d = _models_dir()
        self._net = dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat"))
        self._sp68 = dlib.shape_predictor(str(d / "shape_predictor_68_face_landmarks.dat"))

    def landmarks68(self, image_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        shape = self._sp68(rgb, self._dlib.rectangle(x1, y1, x2, y2))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def embed(self, image_bgr: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        """L2-normalised 128-d embedding of the face whose 68 landmarks are given (image pixels)."""
        pts = np.asarray(landmarks68, dtype=np.float64).reshape(68, 2)
        x1, y1 = pts.min(0)
        x2, y2 = pts.max(0)
        rect = self._dlib.rectangle(int(x1), int(y1), int(x2), int(y2))
        shape = self._dlib.full_object_detection(rect, [self._dlib.point(int(round(x)), int(round(y))) for x, y in pts])
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        e = np.asarray(self._net.compute_face_descriptor(rgb, shape), dtype=np.float32)
        return e / max(float(np.linalg.norm(e)), 1e-12)
