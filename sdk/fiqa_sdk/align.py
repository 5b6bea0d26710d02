"""Similarity-transform alignment of five landmarks onto the 112x112 ArcFace template."""
from __future__ import annotations

import cv2
import numpy as np

from fiqa_sdk.frames import to_bgr
from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112, SPEC


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst (Umeyama 1991).

    Returns a 2x3 matrix for cv2.warpAffine. Exact, no RANSAC: five good landmarks need none.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s ** 2).sum() / len(src)
    if var_s == 0:
        raise ValueError("landmarks are all at the same point; cannot align")
    scale = np.trace(np.diag(sig) @ sign) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]]).astype(np.float32)


def alignment_matrix(landmarks: np.ndarray, size: int = SPEC.size) -> np.ndarray:
    """2x3 matrix taking frame coordinates to the size x size aligned crop."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    return estimate_similarity(np.asarray(landmarks, dtype=np.float32).reshape(5, 2), template)


# Bilinear warping aliases when it shrinks by more than ~2x (a webcam face 90 px between the eyes is shrunk
# ~2.5x into the 112 crop): fine texture folds into false detail, inflating sharpness and unlike the
# training faces. Such frames are first shrunk with area averaging, leaving the warp a gentle scale.
_MAX_WARP_SHRINK = 0.5
_RESIDUAL_SHRINK = 0.75


def warp_to_crop(frame: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int],
                 border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """cv2.warpAffine with an anti-aliasing area pre-shrink for strong down-scaling."""
    w, h = (size, size) if isinstance(size, int) else size
    m = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < _MAX_WARP_SHRINK:
        f = scale / _RESIDUAL_SHRINK
        fh, fw = frame.shape[:2]
        nw, nh = max(1, round(fw * f)), max(1, round(fh * f))
        frame = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / fw, nh / fh
        # small pixel centre (x + 0.5) / fx - 0.5 is the original x: fold that map into the warp.
        a = m[:, :2] @ np.diag([1.0 / fx, 1.0 / fy])
        t = m[:, 2] + m[:, :2] @ np.array([0.5 / fx - 0.5, 0.5 / fy - 0.5])
        m = np.hstack([a, t[:, None]])
    return cv2.warpAffine(frame, m.astype(np.float32), (w, h), flags=cv2.INTER_LINEAR, borderMode=border,
                          borderValue=0)


def align_face(frame: np.ndarray, landmarks: np.ndarray, size: int = SPEC.size) -> np.ndarray:
    """Warp a face to the aligned crop, size x size x 3 BGR uint8 whatever the frame's format (gray, BGR, BGRA,
    float in [0, 1]: what the detector accepts). ``landmarks``: 5x2 (eyes, nose, mouth corners) in frame pixels.

    Where the crop reaches past the frame edge the edge pixels are repeated, as in the crops the teachers and the
    student were trained on (:mod:`fiqa_calibration.crops`): black padding there would be a degradation the models
    never saw, and a face cut by the edge would score unlike the same face in training."""
    return warp_to_crop(to_bgr(frame), alignment_matrix(landmarks, size), size, border=cv2.BORDER_REPLICATE)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]
