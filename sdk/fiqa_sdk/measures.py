"""Hand-crafted image and landmark measures: the classical FIQA baselines and the gate's rejection reasons.

A learned quality score says *that* a capture is poor; these say *why* (blurred, dark, burnt out, too
small, turned away), so the device can tell the user what to fix. They are also the baselines every
learned model must beat in the EDC evaluation. numpy + OpenCV only (device side).

Image measures take any frame :func:`fiqa_sdk.frames.to_bgr` accepts (BGR, gray, BGRA, float in [0, 1]).
Sharpness values depend on resolution, so compare them on the same crop size (the 112x112 aligned face).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from fiqa_sdk.frames import to_bgr
from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112

# Luma limits for clipped pixels (8-bit BT.601 luma). Video "studio range" puts black at 16 and white at
# 235; pixels outside roughly that band carry little detail after JPEG compression.
UNDER_EXPOSED_LUMA = 16.0
OVER_EXPOSED_LUMA = 239.0

# Assumed depth of the nose tip in front of the eye/mouth plane, in inter-ocular distances. It only scales
# the yaw/pitch proxies into degree-like units; nothing here is fitted to ground-truth head poses.
NOSE_DEPTH_IOD = 0.5


def _luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma (0.299 R + 0.587 G + 0.114 B) as float64 in [0, 255]; the weights cv2 uses for gray.

    float64 so that filter responses and variances are not rounded (OpenCV filters keep the input depth).
    """
    bgr = to_bgr(image)
    return cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY).astype(np.float64)


def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the Laplacian of luma (Pech-Pacheco et al. 2000): blur removes the high frequencies it sees.

    The plain 4-neighbour kernel (OpenCV ``ksize=1``), the common definition; on 112x112 aligned LFW faces the
    5th / 50th / 95th percentiles are about 57 / 139 / 323 (the gate's limits are in these units).
    """
    lap = cv2.Laplacian(_luma(image), cv2.CV_64F, ksize=1)
    return float(lap.var())


def tenengrad(image: np.ndarray, ksize: int = 3) -> float:
    """Mean squared Sobel gradient magnitude of luma (Tenenbaum 1970): edge strength, falls with defocus/motion blur."""
    if ksize not in (1, 3, 5, 7):
        raise ValueError(f"ksize must be 1, 3, 5 or 7 (an OpenCV Sobel aperture), got {ksize}")
    y = _luma(image)
    gx = cv2.Sobel(y, cv2.CV_64F, 1, 0, ksize=ksize)
    gy = cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=ksize)
    return float(np.mean(gx * gx + gy * gy))


def mean_brightness(image: np.ndarray) -> float:
    """Mean BT.601 luma in [0, 255]."""
    return float(_luma(image).mean())


def exposure_fractions(image: np.ndarray, under: float = UNDER_EXPOSED_LUMA,
                       over: float = OVER_EXPOSED_LUMA) -> tuple[float, float]:
    """Fractions of pixels with luma <= ``under`` (crushed shadows) and >= ``over`` (blown highlights)."""
    if not 0.0 <= under < over <= 255.0:
        raise ValueError(f"need 0 <= under < over <= 255, got under={under}, over={over}")
    y = _luma(image)
    return float(np.mean(y <= under)), float(np.mean(y >= over))


def rms_contrast(image: np.ndarray) -> float:
    """Standard deviation of luma scaled to [0, 1] (Peli 1990); 0 for a flat image, at most 0.5."""
    return float((_luma(image) / 255.0).std())


def _landmarks(landmarks: np.ndarray) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"landmarks must be 5x2 (eyes, nose, mouth corners in image order), got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks contain NaN or inf; pass the detector's 5 landmarks in pixel coordinates")
    return pts


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Eye-centre distance in pixels: a face-size measure that, unlike the box, barely depends on the detector."""
    pts = _landmarks(landmarks)
    return float(np.linalg.norm(pts[1] - pts[0]))


@dataclass(frozen=True)
class HeadPose:
    """Degree-like head-pose proxies from five 2-D landmarks. See :func:`head_pose` for what they are (not)."""

    yaw: float    # > 0: nose towards the image's right side
    pitch: float  # > 0: nose towards the eye line (chin up)
    roll: float   # > 0: eye line rotated counter-clockwise as displayed (same sense as cv2.getRotationMatrix2D)

    def to_dict(self) -> dict:
        return {k: round(v, 2) for k, v in asdict(self).items()}


def _face_frame(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Landmarks in a face-aligned frame: origin at the eye midpoint, x along the eye line, y towards the mouth,
    unit = inter-ocular distance. Undoing roll first makes yaw and pitch independent of in-plane rotation."""
    eye_vec = pts[1] - pts[0]
    iod = float(np.linalg.norm(eye_vec))
    if iod < 1e-6:
        raise ValueError("the two eye landmarks coincide; the landmarks cannot describe a face")
    ex = eye_vec / iod
    ey = np.array([-ex[1], ex[0]])  # +90 degrees in image coordinates (y down): points from the eyes to the mouth
    rel = pts - (pts[0] + pts[1]) / 2.0
    return rel @ ex / iod, rel @ ey / iod, iod


def _yaw_pitch_ratios(pts: np.ndarray) -> tuple[float, float]:
    """(horizontal nose offset from the eye-mouth midline, nose height between eye and mouth lines)."""
    u, v, _ = _face_frame(pts)
    u_mouth, v_mouth = (u[3] + u[4]) / 2.0, (v[3] + v[4]) / 2.0
    if v_mouth <= 1e-6:
        raise ValueError("the mouth landmarks are not below the eye line in the face frame; check the landmark order "
                         "(left eye, right eye, nose, left mouth, right mouth, as seen in the image)")
    midline_u = u_mouth * v[2] / v_mouth  # the eye-mouth midline at the nose's height
    return float(u[2] - midline_u), float(v[2] / v_mouth)


_TEMPLATE_U, _TEMPLATE_R = _yaw_pitch_ratios(ARCFACE_TEMPLATE_112.astype(np.float64))
_TEMPLATE_EYE_MOUTH_IOD = float(_face_frame(ARCFACE_TEMPLATE_112.astype(np.float64))[1][3:].mean())


def head_pose(landmarks: np.ndarray) -> HeadPose:
    """Approximate yaw, pitch and roll in degree-like units from five landmarks.

    An approximation, not a head-pose estimator: five 2-D points carry no depth, so a rigid head with the nose
    tip ``NOSE_DEPTH_IOD`` inter-ocular distances in front of the eye/mouth plane is assumed.

    * roll: angle of the eye line (exact for in-plane rotation).
    * yaw: the nose tip's sideways offset from the eye-midpoint/mouth-midpoint line, over the inter-ocular
      distance; under the rigid model offset = depth * tan(yaw), so ``atan(offset / depth)``.
    * pitch: where the nose sits between the eye line (0) and the mouth line (1), relative to the frontal
      ArcFace template; under the model the shift is (depth / eye-mouth height) * tan(pitch).

    The ArcFace template reads yaw = pitch = 0. Signs are reliable and the proxies grow monotonically with
    the true angle; magnitudes beyond ~45 degrees (and with detector jitter on small faces) are rough. Pitch is
    the weakest: mouth corners move with expression (a smile raises them, which reads as chin-down). On
    mostly-frontal LFW faces with RetinaFace landmarks the 5th-95th percentiles are about -28..+23 (yaw) and
    -28..+18 (pitch), so pose limits below ~30 degrees will also reject some frontal faces.
    """
    pts = _landmarks(landmarks)
    eye_vec = pts[1] - pts[0]
    roll = -math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    offset, ratio = _yaw_pitch_ratios(pts)
    yaw = math.degrees(math.atan((offset - _TEMPLATE_U) / NOSE_DEPTH_IOD))
    pitch = math.degrees(math.atan((_TEMPLATE_R - ratio) * _TEMPLATE_EYE_MOUTH_IOD / NOSE_DEPTH_IOD))
    return HeadPose(yaw=yaw, pitch=pitch, roll=roll)


def image_measures(image: np.ndarray) -> dict[str, float]:
    """All image measures of one (aligned) face crop, keyed by name, for gate reasons and baseline tables.

    ``sharpness`` is :func:`laplacian_variance`, under the key :mod:`fiqa_sdk.gate` reads.
    """
    under, over = exposure_fractions(image)
    return {
        "sharpness": laplacian_variance(image),
        "tenengrad": tenengrad(image),
        "brightness": mean_brightness(image),
        "under_exposed": under,
        "over_exposed": over,
        "rms_contrast": rms_contrast(image),
    }


def landmark_measures(landmarks: np.ndarray) -> dict[str, float]:
    """Face size and pose proxies from the detector's five landmarks (frame pixels, not the aligned crop)."""
    pose = head_pose(landmarks)
    return {"iod_px": inter_ocular_distance(landmarks), "yaw": pose.yaw, "pitch": pose.pitch, "roll": pose.roll}
