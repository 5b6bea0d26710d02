"""Batch augmentation for distillation with an online teacher.

When a teacher scores the very crop the student sees, any augmentation keeps its target exact, so the
student can see far more distinct faces than the photos hold: a small re-alignment (the jitter a device's
detector and landmarks add anyway), a photometric change, and a fresh seeded degradation chain.
Every draw comes from ``np.random.default_rng([seed, epoch, batch])`` so a resumed run replays it.

:func:`mix_faces` goes further off the photos (Beyer et al. 2022, "a good teacher is patient and consistent":
function matching on mixup images): two aligned faces blended pixel by pixel are not a photo of anyone, but
the teacher still scores them, and matching it there too shapes the student's function between the photos.
:func:`swap_parts` makes new people rather than ghosts: the eyes, nose or mouth of one aligned face, its
colours matched and its edge feathered, pasted onto another, so the student cannot learn a face's quality by
recognising whose face it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fiqa_calibration.degradations import sample_chain
from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112


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


def _pick_rows(crops: np.ndarray, share: float, rng: np.random.Generator, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``crops`` and the ``share`` of rows to change; none when a batch has no second face to use."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{what} share must be in [0, 1], got {share}")
    mask = rng.random(len(crops)) < share
    return crops.copy(), mask & (len(crops) >= 2)


def _other_row(i: int, n: int, rng: np.random.Generator) -> int:
    """Any row of an ``n``-row batch but ``i``, uniformly."""
    return int((i + rng.integers(1, n)) % n)


def mix_faces(crops: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend a ``share`` of ``crops`` with another crop of the same batch; returns (crops, mixed mask).

    The weight of the other face is uniform in [0, 1) per crop (mixup with Beta(1, 1)). The crops are aligned
    to one template, so the eyes and mouth of both faces coincide and the blend stays face-shaped.
    """
    out, mask = _pick_rows(crops, share, rng, "mixup")
    for i in np.where(mask)[0]:
        j = _other_row(i, len(crops), rng)
        lam = rng.random()
        out[i] = np.clip((1.0 - lam) * crops[i].astype(np.float32) + lam * crops[j].astype(np.float32) + 0.5,
                         0, 255).astype(np.uint8)
    return out, mask


# Face parts on the 112x112 template as ellipses: centre (x, y) and half-axes, from ARCFACE_TEMPLATE_112.
_EYES, _NOSE, _MOUTH = ARCFACE_TEMPLATE_112[:2].mean(0), ARCFACE_TEMPLATE_112[2], ARCFACE_TEMPLATE_112[3:].mean(0)
FACE_PARTS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "eyes": ((float(_EYES[0]), float(_EYES[1]) - 2.0), (30.0, 13.0)),
    "nose": ((float(_NOSE[0]), float(_NOSE[1]) - 4.0), (11.0, 15.0)),
    "mouth": ((float(_MOUTH[0]), float(_MOUTH[1])), (22.0, 11.0)),
}


def part_mask(part: str, size: int = 112, feather: float = 3.0) -> np.ndarray:
    """[size, size] float32 weights in [0, 1]: 1 inside ``part``'s ellipse, falling to 0 over ``feather`` px."""
    if part not in FACE_PARTS:
        raise ValueError(f"unknown face part {part!r}; choose one of {', '.join(FACE_PARTS)}")
    (cx, cy), (ax, ay) = FACE_PARTS[part]
    k = size / 112.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.sqrt(((xx - cx * k) / (ax * k)) ** 2 + ((yy - cy * k) / (ay * k)) ** 2)   # 1 on the ellipse
    return np.clip((1.0 - r) * min(ax, ay) * k / feather + 0.5, 0.0, 1.0).astype(np.float32)


def swap_parts(crops: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste one face part of another crop of the batch onto a ``share`` of ``crops``; returns (crops, mask).

    The part (eyes, nose or mouth, picked uniformly) keeps its own texture but takes the receiving face's mean
    and spread per colour channel under the mask, so skin tone and lighting do not leave a patch behind.
    """
    out, mask = _pick_rows(crops, share, rng, "part-swap")
    masks = {p: part_mask(p, crops.shape[1]) for p in FACE_PARTS}
    names = list(FACE_PARTS)
    for i in np.where(mask)[0]:
        j = _other_row(i, len(crops), rng)
        w = masks[names[rng.integers(len(names))]]
        inside = w > 0.5
        dst, src = crops[i].astype(np.float32), crops[j].astype(np.float32)
        d_mu, d_sd = dst[inside].mean(0), dst[inside].std(0) + 1.0
        s_mu, s_sd = src[inside].mean(0), src[inside].std(0) + 1.0
        matched = (src - s_mu) * (d_sd / s_sd) + d_mu
        out[i] = np.clip(dst + w[..., None] * (matched - dst) + 0.5, 0, 255).astype(np.uint8)
    return out, mask
