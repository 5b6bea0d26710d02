"""Recognition-utility labels from two FR models, for every photo of a frame set (:mod:`.frame_set`).

A face is useful when a recogniser matches it to another photo of the same person above the threshold that keeps
false matches rare. For a sample x of photo p, for each FR model m (dlib's ResNet, MobileFaceNet):

  own_m(x)    = cos(e_m(x), e_m(p clean))           what the degradation (and the device's re-detection) did
  cross_m(p)  = how recognisable the clean photo is: cos(e_m(p clean), centre of the person's n other clean
                photos), shrunk towards what MobileFaceNet's embedding norm predicts for it with weight
                n / (n + PRIOR_PHOTOS): one other photo is one noisy comparison, and people with a single photo (most
                of LFW) have only the prediction
  genuine_m   = own_m(x) * cross_m(p)               the expected genuine score against another photo (for angles
                that add in random directions of a high-dimensional space, cosines multiply)
  margin_m(x) = (genuine_m - threshold_m) / spread_m  threshold at FMR 1e-3 over the clean impostor comparisons,
                spread = the genuine scores' standard deviation, so both recognisers count alike

The label is the mean of the two margins. The norm of MobileFaceNet's embedding grows with how recognisable a face
is (as MagFace's does); the prediction is a least-squares line of cross_m on it over the photos whose person has
other photos. Every sample the detector found gets a label, people with one photo included (their degraded versions
are referenced to their own clean photo). A sample the detector lost gets none: the device never scores it.
"""
from __future__ import annotations

import numpy as np

FR_MODELS = ("dlib", "mobilefacenet")
LABEL_FMR = 1e-3
PRIOR_PHOTOS = 2.0  # how many other photos the norm's prediction is worth


def unit_rows(e: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (an FR embedding as cosine similarity compares it)."""
    return e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)


def embeddings(data: dict[str, np.ndarray], fr: str) -> np.ndarray:
    return unit_rows(data["emb_dlib"] if fr == "dlib" else data["emb_mfn"])


def mfn_norm(data: dict[str, np.ndarray]) -> np.ndarray:
    return (np.linalg.norm(data["emb_mfn"], axis=1) + np.linalg.norm(data["emb_mfn_mirror"], axis=1)) / 2


def clean_rows(data: dict[str, np.ndarray]) -> dict[int, int]:
    """photo -> row of its clean, detected version."""
    ok = data["detected"].astype(bool) & (data["version"] == 0)
    return {int(p): int(r) for r, p in zip(np.flatnonzero(ok), data["photo"][ok])}


def cross_similarity(e: np.ndarray, data: dict[str, np.ndarray], clean: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per clean row: (cos with the normalised mean of the person's other clean photos or NaN, how many there are)."""
    rows = np.array(sorted(clean.values()))
    ident = data["identity"][rows]
    cos = np.full(len(data["photo"]), np.nan)
    others = np.zeros(len(data["photo"]))
    for person in np.unique(ident):
        r = rows[ident == person]
        if len(r) < 2:
            continue
        total = e[r].sum(0)
        for i in r:
            c = total - e[i]
            cos[i] = float(e[i] @ c / max(np.linalg.norm(c), 1e-12))
            others[i] = len(r) - 1
    return cos, others


def shrunk_cross(cos: np.ndarray, others: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """``cos`` shrunk towards its least-squares prediction from ``norm`` (weight others / (others + PRIOR_PHOTOS))."""
    known = ~np.isnan(cos) & ~np.isnan(norm)
    slope, intercept = np.polyfit(norm[known], cos[known], 1)
    prior = slope * norm + intercept
    w = others / (others + PRIOR_PHOTOS)
    return np.where(known, w * np.nan_to_num(cos) + (1 - w) * prior, prior)


def impostor_threshold(e: np.ndarray, data: dict[str, np.ndarray], clean: dict[int, int], fmr: float = LABEL_FMR,
                       n: int = 200_000, seed: int = 0) -> float:
    """Similarity threshold at ``fmr`` over random clean photo pairs of different people."""
    rows = np.array(sorted(clean.values()))
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(rows), n), rng.integers(0, len(rows), n)
    keep = data["identity"][rows[a]] != data["identity"][rows[b]]
    s = np.einsum("ij,ij->i", e[rows[a[keep]]], e[rows[b[keep]]])
    return float(np.quantile(s, 1 - fmr))


def recognition_labels(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The utility label of every row (NaN where the face was not detected) and its parts, for the record."""
    clean = clean_rows(data)
    found = data["detected"].astype(bool) & np.array([int(p) in clean for p in data["photo"]])
    ref = np.array([clean.get(int(p), 0) for p in data["photo"]])
    norm = np.where(found, mfn_norm(data), np.nan)
    parts: dict[str, np.ndarray] = {"norm_mobilefacenet": norm}
    margins = []
    for fr in FR_MODELS:
        e = embeddings(data, fr)
        own = np.where(found, np.einsum("ij,ij->i", e, e[ref]), np.nan)
        cos, others = cross_similarity(e, data, clean)
        cross = shrunk_cross(cos, others, norm)[ref]
        genuine = own * cross
        threshold = impostor_threshold(e, data, clean)
        margins.append((genuine - threshold) / float(np.nanstd(genuine[found])))
        parts.update({f"own_{fr}": own, f"cross_{fr}": cross, f"margin_{fr}": margins[-1],
                      f"threshold_{fr}": np.full(len(own), threshold)})
    parts["label"] = np.where(found, (margins[0] + margins[1]) / 2, np.nan)
    return parts


def write_label_set(data: dict[str, np.ndarray], out, source: str) -> int:
    """The labelled rows as a ``labels.npz`` that ``fiqa-train utility`` reads (label in ``cr``); returns the rows.

    No 68-point landmarks or pseudo-MOS are measured here: ``lm68`` is zeros and ``mos`` NaN, so the set trains the
    utility teacher only.
    """
    import json
    import os
    from pathlib import Path

    parts = recognition_labels(data)
    keep = ~np.isnan(parts["label"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = int(keep.sum())
    arrays = {"crop": data["crop"][keep], "lm68": np.zeros((n, 68, 2), np.float32),
              "identity": data["identity"][keep], "photo": data["photo"][keep], "version": data["version"][keep],
              "cr": parts["label"][keep], "mos": np.full(n, np.nan), "severity": data["severity"][keep],
              "chain": data["chain"][keep], "emb": data["emb_dlib"][keep]}
    tmp = out / "labels.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out / "labels.npz")
    (out / "labels.json").write_text(json.dumps({"source": source, "samples": n, "utility": __doc__.split("\n\n")[0],
                                                 "fr_models": list(FR_MODELS), "fmr": LABEL_FMR}, indent=2))
    return n


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from fiqa_compile.labels.frame_set import load

    ap = argparse.ArgumentParser(prog="python -m fiqa_compile.labels.recognition",
                                 description="Write a frame set's recognition-utility labels as a label set "
                                             "(labels.npz) for fiqa-train utility.")
    ap.add_argument("--frames", required=True, help="frame set (python -m fiqa_compile.labels.frame_set)")
    ap.add_argument("--out", required=True, help="label-set folder to write")
    args = ap.parse_args(argv)
    try:
        n = write_label_set(load(args.frames), args.out, str(args.frames))
    except (OSError, ValueError) as e:
        print(f"recognition labels: {e}", file=sys.stderr)
        return 2
    print(f"{n} labelled faces in {args.out}/labels.npz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
