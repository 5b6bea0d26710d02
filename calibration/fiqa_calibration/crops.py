"""Aligned face crops with seeded degraded versions: the unit that labels, distillation and calibration share.

A face is warped onto an *aligned canvas*: the 112x112 ArcFace crop of the device plus ``MARGIN`` pixels on
every side. Degradations are applied to the canvas (so their parameters stay in face units, and blur or
JPEG blocks near the crop border see real neighbouring pixels), and the crop is then cut out of the
canvas without resampling — exactly the crop the device would align from a degraded capture.
"""
from __future__ import annotations

import json

import cv2
import numpy as np

from fiqa_calibration.degradations import Chain, sample_chain
from fiqa_sdk.align import alignment_matrix, estimate_similarity, warp_to_crop
from fiqa_sdk.detection import Detection
from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112, SPEC

MARGIN = 24
CANVAS = SPEC.size + 2 * MARGIN


def canvas_matrix(landmarks5: np.ndarray) -> np.ndarray:
    """2x3 matrix from frame pixels to canvas pixels."""
    return estimate_similarity(landmarks5, ARCFACE_TEMPLATE_112 + MARGIN)


def aligned_canvas(frame_bgr: np.ndarray, landmarks5: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = canvas_matrix(landmarks5)
    canvas = warp_to_crop(frame_bgr, m, CANVAS, border=cv2.BORDER_REPLICATE)
    return canvas, m


def crop_from_canvas(canvas: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(canvas[MARGIN:MARGIN + SPEC.size, MARGIN:MARGIN + SPEC.size])


def central_face(detections: list[Detection], frame_shape: tuple[int, ...]) -> Detection:
    """The detection nearest the frame centre (photos of one person are usually centred on them)."""
    if not detections:
        raise ValueError("no detections to choose from")
    h, w = frame_shape[:2]
    centre = np.array([w / 2, h / 2])
    return min(detections, key=lambda d: float(np.linalg.norm((d.box[:2] + d.box[2:]) / 2 - centre)))


def degraded_version(canvas: np.ndarray, photo: int, version: int, seed: int,
                     max_steps: int = 2) -> tuple[np.ndarray, Chain | None]:
    """Version 0 is the clean canvas; version v > 0 applies a chain drawn from rng(seed, photo, v)."""
    if version == 0:
        return canvas, None
    chain = sample_chain(np.random.default_rng([seed, photo, version]), max_steps=max_steps)
    return chain.apply(canvas), chain


def chain_json(chain: Chain | None) -> str:
    return "" if chain is None else json.dumps(chain.to_dict(), sort_keys=True)


class FaceVersion:
    """One (clean or degraded) version of one photo's face."""

    __slots__ = ("version", "canvas", "crop", "lm68", "chain")

    def __init__(self, version: int, canvas: np.ndarray, lm68: np.ndarray | None, chain: Chain | None):
        self.version, self.canvas, self.chain = version, canvas, chain
        self.crop = crop_from_canvas(canvas)
        self.lm68 = None if lm68 is None else (lm68 - MARGIN).astype(np.float32)  # crop pixels

    @property
    def severity(self) -> float:
        return 0.0 if self.chain is None else float(self.chain.severity)


def face_versions(frame_bgr: np.ndarray, detector, photo: int, versions: int, seed: int, max_steps: int = 2,
                  landmarks68=None) -> tuple[list[FaceVersion], np.ndarray | None, str | None]:
    """Detect the central face of a photo and make its clean + ``versions`` degraded aligned versions.

    ``landmarks68(frame, box) -> (68, 2)`` (e.g. dlib's predictor) adds landmarks in crop pixels, which
    DSL-FIQA's landmark guidance needs. Returns (versions, 68 landmarks in canvas pixels or None, failure
    reason or None); a photo without a face yields no versions and a reason instead of an exception.
    """
    detections = detector(frame_bgr)
    if not detections:
        return [], None, "no face detected"
    face = central_face(detections, frame_bgr.shape)
    canvas, m = aligned_canvas(frame_bgr, face.landmarks)
    lm_canvas = None
    if landmarks68 is not None:
        lm_canvas = np.asarray(landmarks68(frame_bgr, face.box), np.float32) @ m[:, :2].T + m[:, 2]
    out = []
    for v in range(versions + 1):
        img, chain = degraded_version(canvas, photo, v, seed, max_steps)
        out.append(FaceVersion(v, img, lm_canvas, chain))
    return out, lm_canvas, None


# --------------------------------------------------------------------------- degraded in the frame, as a device sees it
ARCFACE_EYE_DISTANCE = float(np.linalg.norm(ARCFACE_TEMPLATE_112[1] - ARCFACE_TEMPLATE_112[0]))
MIN_SAME_FACE_IOU = 0.3  # a detection in the degraded frame overlapping the clean face less than this is another face


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:4], b[2:4])
    inter = max(0.0, float(x2 - x1)) * max(0.0, float(y2 - y1))
    union = float(np.prod(a[2:4] - a[:2]) + np.prod(b[2:4] - b[:2])) - inter
    return inter / union if union > 0 else 0.0


class FrameVersion:
    """One version of a photo degraded *in the frame*, then detected and aligned as the device would.

    ``detection`` is None when the device would not find the face any more (or found only another face):
    such a capture is never scored, and its loss is part of what the degradation did.
    """

    __slots__ = ("version", "frame", "chain", "detection", "crop")

    def __init__(self, version: int, frame: np.ndarray, chain: Chain | None, detection: Detection | None):
        self.version, self.frame, self.chain, self.detection = version, frame, chain, detection
        self.crop = None if detection is None else warp_to_crop(frame, alignment_matrix(detection.landmarks),
                                                                SPEC.size)

    @property
    def severity(self) -> float:
        return 0.0 if self.chain is None else float(self.chain.severity)

    @property
    def kind(self) -> str:
        return "clean" if self.chain is None else "+".join(s.kind for s in self.chain.steps)


def frame_scale(landmarks5: np.ndarray) -> float:
    """Pixel-size multiplier that makes a chain degrade a frame's face as much as a 112x112 crop (eye distance)."""
    eye_distance = float(np.linalg.norm(np.asarray(landmarks5)[1] - np.asarray(landmarks5)[0]))
    return max(eye_distance / ARCFACE_EYE_DISTANCE, 0.25)


def frame_versions(frame_bgr: np.ndarray, detector, photo: int, chains: list[Chain]) -> tuple[list[FrameVersion], str | None]:
    """The clean photo and one version per chain, each degraded in the frame and detected again.

    Pixel parameters scale with the clean face's eye distance (``scale = eye distance / 35.24``), so a chain
    degrades the face as much as on a 112x112 crop whatever the photo's resolution. The degraded frame's
    face is the detection that overlaps the clean face most. Returns (versions, failure reason or None).
    """
    detections = detector(frame_bgr)
    if not detections:
        return [], "no face detected"
    face = central_face(detections, frame_bgr.shape)
    scale = frame_scale(face.landmarks)
    out = [FrameVersion(0, frame_bgr, None, face)]
    for v, chain in enumerate(chains, start=1):
        degraded = chain.apply(frame_bgr, scale=scale)
        found = [(box_iou(d.box, face.box), d) for d in detector(degraded)]
        iou, best = max(found, key=lambda t: t[0], default=(0.0, None))
        out.append(FrameVersion(v, degraded, chain, best if iou >= MIN_SAME_FACE_IOU else None))
    return out, None
