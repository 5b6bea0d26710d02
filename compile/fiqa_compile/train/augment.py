"""Batch augmentation for distillation with an online teacher.

When a teacher scores the very crop the student sees, any augmentation keeps its target exact, so the
student can see far more distinct faces than the photos hold: a small re-alignment (the jitter a device's
detector and landmarks add anyway), a photometric change, and a fresh seeded degradation chain.
Every draw comes from ``np.random.default_rng([seed, epoch, batch])`` so a resumed run replays it.

:func:`mix_faces` goes further off the photos (Beyer et al. 2022, "a good teacher is patient and consistent":
function matching on mixup images): two aligned faces blended pixel by pixel are not a photo of anyone, but
the teacher still scores them, and matching it there too shapes the student's function between the photos.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fiqa_calibration.degradations import sample_chain


@dataclass(frozen=True)
class AugmentConfig:
    """Share of a batch to augment and how far. ``fraction`` 0 turns augmentation off."""

    fraction: float = 0.5
    shift_px: float = 3.0        # max translation, pixels of the 112 crop
    scale: float = 0.06          # max relative zoom in or out
    rotate_deg: float = 6.0      # max in-plane rotation
    photometric: float = 0.2     # max relative gain and contrast change
    degrade_p: float = 0.5       # chance an augmented crop also gets a fresh degradation chain

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"augment fraction must be in [0, 1], got {self.fraction}")
        if not 0.0 <= self.degrade_p <= 1.0:
            raise ValueError(f"degrade_p must be in [0, 1], got {self.degrade_p}")


def augment_batch(crops: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Augment a ``cfg.fraction`` share of ``crops`` ([B,H,W,3] uint8 BGR); returns (crops, augmented mask).

    Untouched rows are returned as they are, so a cached target that only holds for the original crop can
    still be used on them.
    """
    out = crops.copy()
    mask = rng.random(len(crops)) < cfg.fraction
    h, w = crops.shape[1:3]
    for i in np.where(mask)[0]:
        angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
        zoom = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, zoom)
        m[:, 2] += rng.uniform(-cfg.shift_px, cfg.shift_px, size=2)
        img = cv2.warpAffine(crops[i], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        gain = 1.0 + rng.uniform(-cfg.photometric, cfg.photometric)
        contrast = 1.0 + rng.uniform(-cfg.photometric, cfg.photometric)
        f = img.astype(np.float32)
        f = (f - f.mean()) * contrast + f.mean() * gain
        img = np.clip(f, 0, 255).astype(np.uint8)
        if rng.random() < cfg.degrade_p:
            img = sample_chain(rng, max_steps=2).apply(img)
        out[i] = img
    return out, mask


def mix_faces(crops: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend a ``share`` of ``crops`` with another crop of the same batch; returns (crops, mixed mask).

    The weight of the other face is uniform in [0, 1) per crop (mixup with Beta(1, 1)). The crops are aligned
    to one template, so the eyes and mouth of both faces coincide and the blend stays face-shaped.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"mixup share must be in [0, 1], got {share}")
    out = crops.copy()
    mask = rng.random(len(crops)) < share
    if len(crops) < 2:
        return out, np.zeros(len(crops), bool)
    for i in np.where(mask)[0]:
        j = (i + rng.integers(1, len(crops))) % len(crops)   # any other row
        lam = rng.random()
        out[i] = np.clip((1.0 - lam) * crops[i].astype(np.float32) + lam * crops[j].astype(np.float32) + 0.5,
                         0, 255).astype(np.uint8)
    return out, mask
