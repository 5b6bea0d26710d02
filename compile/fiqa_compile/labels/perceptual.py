"""Pseudo-MOS for perceptual quality: full-reference MS-SSIM of a degraded face to its clean original.

No human MOS exists for our faces, so DSL-FIQA's perceptual target is *measured*: the multi-scale SSIM
(Wang et al. 2003) between the degraded aligned face and the clean aligned face, on luma, over the
face region (the aligned 112x112 crop), mapped to 0-100. Clean faces are the reference and score 100.
MS-SSIM falls monotonically as any of our degradations grows, which is what a perceptual score must do.
"""
from __future__ import annotations

import cv2
import numpy as np

# Wang et al.'s 5-scale weights; 112x112 faces support 4 scales (112, 56, 28, 14), renormalised.
_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363], dtype=np.float64)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _luma(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return img.astype(np.float64)


def _ssim_parts(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    blur = lambda a: cv2.GaussianBlur(a, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    cs = (2 * sxy + _C2) / (sxx + syy + _C2)
    lum = (2 * mx * my + _C1) / (mx * mx + my * my + _C1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def ms_ssim(degraded: np.ndarray, reference: np.ndarray) -> float:
    """MS-SSIM in [0, 1] (negative contrast terms clipped to 0) between two same-size images."""
    if degraded.shape != reference.shape:
        raise ValueError(f"images differ in shape: {degraded.shape} vs {reference.shape}")
    x, y = _luma(degraded), _luma(reference)
    value = 1.0
    for i, w in enumerate(_WEIGHTS):
        ssim, cs = _ssim_parts(x, y)
        last = i == len(_WEIGHTS) - 1
        value *= max(ssim if last else cs, 0.0) ** w
        if not last:
            x = cv2.resize(x, (x.shape[1] // 2, x.shape[0] // 2), interpolation=cv2.INTER_AREA)
            y = cv2.resize(y, (y.shape[1] // 2, y.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return float(value)


def pseudo_mos(degraded: np.ndarray, reference: np.ndarray) -> float:
    """0-100 perceptual score: 100 * MS-SSIM to the clean reference."""
    return 100.0 * ms_ssim(degraded, reference)
