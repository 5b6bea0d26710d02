"""Label sets made by ``fiqa-labels`` as torch datasets, with an identity-disjoint held-out split."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fiqa_sdk.preprocess import SPEC


class LabelSetError(ValueError):
    pass


@dataclass
class LabelSet:
    """All arrays of a ``labels.npz``; rows are (photo, version) samples."""

    crop: np.ndarray      # [N,112,112,3] uint8 BGR aligned faces
    lm68: np.ndarray      # [N,68,2] landmarks in crop pixels
    identity: np.ndarray  # [N] str
    photo: np.ndarray     # [N] int
    version: np.ndarray   # [N] int (0 = clean)
    cr: np.ndarray        # [N] certainty ratio (NaN where undefined)
    mos: np.ndarray       # [N] pseudo-MOS 0-100
    severity: np.ndarray  # [N]
    chain: np.ndarray     # [N] str, JSON of the degradation chain ('' for clean)
    emb: np.ndarray       # [N,128] dlib embeddings
    meta: dict

    @classmethod
    def load(cls, directory: str | Path) -> "LabelSet":
        directory = Path(directory)
        npz = directory / "labels.npz"
        if not npz.is_file():
            raise LabelSetError(f"{npz} not found; make it with: fiqa-labels --faces DIR --out {directory}")
        z = np.load(npz, allow_pickle=False)
        meta_path = directory / "labels.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return cls(crop=z["crop"], lm68=z["lm68"], identity=z["identity"], photo=z["photo"], version=z["version"],
                   cr=z["cr"], mos=z["mos"], severity=z["severity"], chain=z["chain"], emb=z["emb"], meta=meta)

    def __len__(self) -> int:
        return len(self.photo)

    def degradation_kind(self) -> np.ndarray:
        """First degradation type of each sample's chain ('clean' for version 0)."""
        out = []
        for c in self.chain:
            out.append(json.loads(c)["steps"][0]["kind"] if c else "clean")
        return np.array(out)

    def split(self, held_out: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (train, held-out) with no identity on both sides."""
        ids = np.unique(self.identity)
        rng = np.random.default_rng(seed)
        held = set(rng.choice(ids, size=max(1, round(held_out * len(ids))), replace=False).tolist())
        mask = np.array([i in held for i in self.identity])
        return np.where(~mask)[0], np.where(mask)[0]


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """BGR uint8 [N,H,W,3] -> normalised RGB NCHW float32, exactly as :func:`fiqa_sdk.faces_to_tensor`."""
    x = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).permute(0, 3, 1, 2).float()
    return (x - SPEC.mean) / SPEC.std


# 68-point iBUG mirror permutation: after a horizontal flip, index i must hold the mirrored point.
MIRROR68 = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + list(range(27, 31)) + [35, 34, 33, 32, 31]
                    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40] + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
                    + [64, 63, 62, 61, 60, 67, 66, 65])


def make_batch(labels: LabelSet, rows: np.ndarray, flip: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Images and 68 landmarks of ``rows``; ``flip`` (bool per row) mirrors faces and their landmarks."""
    crops = labels.crop[rows]
    lm = labels.lm68[rows].copy()
    if flip is not None and flip.any():
        crops = crops.copy()
        crops[flip] = crops[flip][:, :, ::-1]
        lm_f = lm[flip][:, MIRROR68]
        lm_f[..., 0] = SPEC.size - 1 - lm_f[..., 0]
        lm[flip] = lm_f
    return {"image": to_tensor(crops), "lm68": torch.from_numpy(lm)}
