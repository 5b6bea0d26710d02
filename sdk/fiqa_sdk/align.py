"""Similarity-transform alignment of five landmarks onto the 112x112 ArcFace template."""
from __future__ import annotations

import cv2
import numpy as np

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


def align_face(frame_bgr: np.ndarray, landmarks: np.ndarray, size: int = SPEC.size) -> np.ndarray:
    """Warp a face to the aligned crop. ``landmarks``: 5x2 (eyes, nose, mouth corners) in frame pixels."""
    m = alignment_matrix(landmarks, size)
    return cv2.warpAffine(frame_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]
