"""Certainty-ratio utility labels (CR-FIQA / ViT-FIQA) measured with a real FR model.

For a sample with embedding e of identity y:
  CCS   = cos(e, c_y)                where c_y is y's class centre,
  NNCCS = max_{j != y} cos(e, c_j)   the nearest other identity's centre,
  CR    = CCS / (NNCCS + 1 + eps).
Class centres are the normalised means of the *clean* embeddings of each identity. A sample's own
photo is left out of its own centre (leave-one-out): otherwise a clean sample would partly compare
with itself and every clean label would be inflated. Identities with a single photo therefore have
no centre of their own; they only serve as "other" centres (NNCCS).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-9


def identity_centres(emb: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of clean embeddings per identity -> (unique ids, sums [K,d], counts [K])."""
    uniq, inv = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(uniq), emb.shape[1]), np.float64)
    np.add.at(sums, inv, emb.astype(np.float64))
    counts = np.bincount(inv, minlength=len(uniq))
    return uniq, sums, counts


def certainty_ratio(emb: np.ndarray, ids: np.ndarray, photo: np.ndarray,
                    clean_emb: np.ndarray, clean_ids: np.ndarray, clean_photo: np.ndarray,
                    eps: float = EPS) -> dict[str, np.ndarray]:
    """CCS, NNCCS and CR for each row of ``emb``.

    ``photo`` / ``clean_photo`` identify the source photograph, so the sample's own clean photo is
    removed from its own identity centre. Rows whose identity has no other clean photo get NaN.
    """
    uniq, sums, counts = identity_centres(clean_emb, clean_ids)
    index = {k: i for i, k in enumerate(uniq)}
    centres = sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)
    clean_by_photo = {p: clean_emb[i] for i, p in enumerate(clean_photo)}
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    cos_all = e @ centres.T  # [N, K]
    ccs = np.full(len(e), np.nan)
    nnccs = np.full(len(e), np.nan)
    for n in range(len(e)):
        k = index.get(ids[n])
        if k is None:
            continue
        own = sums[k] - (clean_by_photo[photo[n]] if photo[n] in clean_by_photo else 0.0)
        own_count = counts[k] - (1 if photo[n] in clean_by_photo else 0)
        if own_count < 1:
            continue
        own = own / max(np.linalg.norm(own), 1e-12)
        ccs[n] = float(e[n] @ own)
        row = cos_all[n].copy()
        row[k] = -np.inf
        nnccs[n] = float(row.max())
    cr = ccs / (nnccs + 1.0 + eps)
    return {"ccs": ccs, "nnccs": nnccs, "cr": cr}
