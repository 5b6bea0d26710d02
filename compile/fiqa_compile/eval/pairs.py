"""Genuine / impostor comparisons for the EDC, cross-quality: one side of a share of the pairs is degraded.

Comparisons are built on *photos*: a genuine pair is two photos of one person, an impostor pair two photos of
different people. Side ``a`` is always the clean version of its photo (the enrolment image); for a seeded share
of the pairs side ``b`` is swapped for one of the degraded versions of its photo (the capture), as in
cross-quality LFW. Versions come from the samples themselves (a label set's ``version > 0`` rows, whose dlib
embeddings are already stored), so building pairs and their comparison scores is array work that takes
seconds. The comparison score is the cosine similarity of the two samples' FR embeddings.

Anything with the arrays ``identity``, ``photo``, ``version`` and ``emb`` (one row per sample) can be paired:
a :class:`~fiqa_compile.train.data.LabelSet`, or :func:`samples_from_faces` for a face folder.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

HELD_OUT = 0.15  # the teachers' split (fiqa-train --held-out 0.15 --seed 0): evaluate on people they never saw
SPLIT_SEED = 0
IMPOSTORS_PER_FMR = 100  # >= 100 / FMR impostor comparisons: ~100 impostor scores above the threshold


class PairError(ValueError):
    """The samples cannot give the requested comparisons; the message says what to change."""


class PairableSamples(Protocol):
    identity: np.ndarray
    photo: np.ndarray
    version: np.ndarray
    emb: np.ndarray


@dataclass(frozen=True)
class Pairs:
    """Comparisons as sample-row indices. ``a`` is always a clean version; ``b`` is degraded where ``degraded``."""

    a: np.ndarray          # [P] int row of side a (version 0)
    b: np.ndarray          # [P] int row of side b
    genuine: np.ndarray    # [P] bool: same identity
    degraded: np.ndarray   # [P] bool: b is a degraded version (version > 0) of its photo
    scores: np.ndarray     # [P] cosine similarity of the two embeddings
    degraded_share: float  # the share asked for (achieved exactly, per genuine and per impostor set)
    seed: int

    def __len__(self) -> int:
        return len(self.a)

    @property
    def rows(self) -> np.ndarray:
        """Sorted distinct sample rows used by any comparison: the samples a quality method has to score."""
        return np.unique(np.concatenate([self.a, self.b]))

    def side_rows(self, genuine: bool) -> np.ndarray:
        """[n, 2] rows (a, b) of the genuine (or impostor) comparisons."""
        m = self.genuine == genuine
        return np.stack([self.a[m], self.b[m]], axis=1)

    def side_scores(self, genuine: bool) -> np.ndarray:
        return self.scores[self.genuine == genuine]

    def summary(self) -> dict[str, float | int]:
        g = self.genuine
        return {"genuine": int(g.sum()), "impostor": int((~g).sum()),
                "genuine_degraded": int((g & self.degraded).sum()),
                "impostor_degraded": int((~g & self.degraded).sum()),
                "degraded_share": self.degraded_share, "samples": int(len(self.rows)), "seed": self.seed}


def cosine_scores(emb: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of embedding rows ``a[i]`` and ``b[i]`` (normalised here, whatever the FR model gives)."""
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim != 2:
        raise PairError(f"embeddings must be [N, D], got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1)
    used = np.concatenate([a, b])
    if np.any(~np.isfinite(norms[used])) or np.any(norms[used] < 1e-12):
        raise PairError("some embeddings of paired samples are zero or NaN; drop those samples "
                        "(failed FR extraction) before pairing")
    return np.einsum("ij,ij->i", e[a], e[b]) / (norms[a] * norms[b])


def held_out_rows(labels, held_out: float = HELD_OUT, seed: int = SPLIT_SEED) -> np.ndarray:
    """Rows of the identities the teachers did not train on (``LabelSet.split``, the exact same draw)."""
    return labels.split(held_out, seed)[1]


def _check(samples: PairableSamples, rows: np.ndarray | None) -> np.ndarray:
    n = len(samples.photo)
    for name in ("identity", "version", "emb"):
        if len(getattr(samples, name)) != n:
            raise PairError(f"samples.{name} has {len(getattr(samples, name))} rows but photo has {n}; "
                            "every array needs one row per sample")
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= n)):
        raise PairError(f"rows must be a 1-D array of sample indices in [0, {n})")
    return np.unique(rows)


def _clean_photos(samples: PairableSamples, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(clean row, identity) per distinct photo among ``rows``; photos without a clean row cannot be paired."""
    clean = rows[samples.version[rows] == 0]
    photos, first = np.unique(samples.photo[clean], return_index=True)
    if len(photos) != len(clean):
        raise PairError("a photo has more than one clean (version 0) sample; the label set is inconsistent, rebuild it")
    clean = clean[first]
    return clean, np.asarray(samples.identity)[clean]


def _degraded_by_photo(samples: PairableSamples, rows: np.ndarray) -> dict[int, np.ndarray]:
    deg = rows[samples.version[rows] > 0]
    out: dict[int, list[int]] = {}
    for r in deg:
        out.setdefault(int(samples.photo[r]), []).append(int(r))
    return {k: np.array(sorted(v)) for k, v in out.items()}


def genuine_photo_pairs(clean: np.ndarray, identity: np.ndarray, rng: np.random.Generator,
                        max_per_identity: int | None = None) -> np.ndarray:
    """[G, 2] clean rows of every within-identity photo pair, or a seeded sample of ``max_per_identity`` each.

    The cap keeps a few heavily photographed people (LFW has one with 530 photos) from being most of the curve.
    """
    if max_per_identity is not None and max_per_identity < 1:
        raise PairError(f"max_per_identity must be >= 1 or None (all pairs), got {max_per_identity}")
    out = []
    for ident in np.unique(identity):
        r = clean[identity == ident]
        if len(r) < 2:
            continue
        i, j = np.triu_indices(len(r), k=1)
        if max_per_identity is not None and len(i) > max_per_identity:
            keep = np.sort(rng.choice(len(i), size=max_per_identity, replace=False))
            i, j = i[keep], j[keep]
        out.append(np.stack([r[i], r[j]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def impostor_photo_pairs(clean: np.ndarray, identity: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 2] distinct clean-row pairs of different identities, drawn uniformly without replacement."""
    m = len(clean)
    _, counts = np.unique(identity, return_counts=True)
    available = m * (m - 1) // 2 - int(np.sum(counts * (counts - 1) // 2))
    if n > available:
        raise PairError(f"asked for {n} impostor pairs but these {m} photos of {len(counts)} people give only "
                        f"{available}; evaluate on more identities, or lower the impostor count (which needs a "
                        "higher FMR: at least 1/FMR impostors, 100/FMR for a stable threshold)")
    chosen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        need = n - len(pairs)
        i = rng.integers(0, m, size=2 * need + 16)
        j = rng.integers(0, m, size=2 * need + 16)
        for x, y in zip(i.tolist(), j.tolist()):
            if x == y or identity[x] == identity[y]:
                continue
            key = (x, y) if x < y else (y, x)
            if key in chosen:
                continue
            chosen.add(key)
            pairs.append(key)
            if len(pairs) == n:
                break
    idx = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return clean[idx]


def _degrade_one_side(photo_pairs: np.ndarray, samples: PairableSamples, versions: dict[int, np.ndarray],
                      share: float, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, degraded): a seeded ``share`` of the pairs get a degraded version of one photo as side b."""
    n = len(photo_pairs)
    a, b = photo_pairs[:, 0].copy(), photo_pairs[:, 1].copy()
    swap = rng.random(n) < 0.5  # which photo is the enrolment side is arbitrary; do not let list order decide
    a[swap], b[swap] = b[swap], a[swap]
    degraded = np.zeros(n, bool)
    target = int(round(share * n))
    if target == 0:
        return a, b, degraded
    photo = np.asarray(samples.photo)
    has_a = np.array([int(photo[r]) in versions for r in a], bool)
    has_b = np.array([int(photo[r]) in versions for r in b], bool)
    eligible = np.flatnonzero(has_a | has_b)
    if len(eligible) < target:
        raise PairError(f"{kind} pairs: {target} of {n} should get a degraded side (share {share:g}) but only "
                        f"{len(eligible)} involve a photo with degraded versions; build the labels with "
                        "degraded versions (fiqa-labels --versions N) or lower the degraded share")
    pick = np.sort(rng.choice(eligible, size=target, replace=False))
    for k in pick:
        if not has_b[k] or (has_a[k] and rng.random() < 0.5):
            a[k], b[k] = b[k], a[k]  # degrade a photo that has versions, either one when both do
        options = versions[int(photo[b[k]])]
        b[k] = options[int(rng.integers(len(options)))]
        degraded[k] = True
    return a, b, degraded


def build_pairs(samples: PairableSamples, rows: np.ndarray | None = None, *, n_impostors: int,
                degraded_share: float = 0.5, max_genuine_per_identity: int | None = None,
                max_genuine: int | None = None, seed: int = 0) -> Pairs:
    """Genuine and impostor comparisons among ``rows`` (default: all samples; pass :func:`held_out_rows`).

    Genuine: every within-identity photo pair (optionally capped per identity and in total, seeded).
    Impostor: ``n_impostors`` distinct cross-identity photo pairs (use :func:`impostors_for_fmr`).
    ``degraded_share`` of each set gets a degraded version of one of its photos as side ``b``.
    """
    if not 0.0 <= degraded_share <= 1.0:
        raise PairError(f"degraded_share must be in [0, 1], got {degraded_share}")
    if n_impostors < 1:
        raise PairError(f"n_impostors must be >= 1, got {n_impostors}")
    rows = _check(samples, rows)
    rng = np.random.default_rng([seed, 7])
    clean, ident = _clean_photos(samples, rows)
    if len(clean) < 2:
        raise PairError(f"only {len(clean)} clean photo(s) among the selected samples; pairs need at least two")
    versions = _degraded_by_photo(samples, rows)
    gen = genuine_photo_pairs(clean, ident, rng, max_genuine_per_identity)
    if len(gen) == 0:
        raise PairError("no identity has two photos among the selected samples, so there are no genuine pairs; "
                        "evaluate on people with several photos each")
    if max_genuine is not None and len(gen) > max_genuine:
        gen = gen[np.sort(rng.choice(len(gen), size=max_genuine, replace=False))]
    imp = impostor_photo_pairs(clean, ident, n_impostors, rng)
    ga, gb, gd = _degrade_one_side(gen, samples, versions, degraded_share, rng, "genuine")
    ia, ib, idg = _degrade_one_side(imp, samples, versions, degraded_share, rng, "impostor")
    a, b = np.concatenate([ga, ia]), np.concatenate([gb, ib])
    genuine = np.concatenate([np.ones(len(ga), bool), np.zeros(len(ia), bool)])
    return Pairs(a=a, b=b, genuine=genuine, degraded=np.concatenate([gd, idg]),
                 scores=cosine_scores(samples.emb, a, b), degraded_share=float(degraded_share), seed=seed)


def impostors_for_fmr(fmr: float, per_fmr: float = IMPOSTORS_PER_FMR) -> int:
    """Impostor comparisons for a stable threshold at ``fmr``: ``per_fmr / fmr`` (10,000 at FMR 1e-2)."""
    if not 0.0 < fmr < 1.0:
        raise PairError(f"fmr must be in (0, 1), got {fmr}")
    return int(math.ceil(per_fmr / fmr - 1e-9))


# ------------------------------------------------------------------------------------- samples from a folder
@dataclass
class FolderSamples:
    """A face folder measured like ``fiqa-labels`` does (minus the labels): versions, crops, embeddings.

    ``emb`` holds the embeddings of the FR model named by ``fr``. ``source_iod`` is the inter-ocular distance of
    each sample's face in its source photo (pixels), which the face-size baseline needs and a label set does not
    store.
    """

    crop: np.ndarray
    lm68: np.ndarray
    identity: np.ndarray
    photo: np.ndarray
    version: np.ndarray
    severity: np.ndarray
    chain: np.ndarray
    emb: np.ndarray
    source_iod: np.ndarray
    paths: list[str]
    failures: list[str]
    fr: str = "dlib"  # the FR model whose embeddings ``emb`` holds (one of fiqa_compile.fr.FR_MODELS)

    def __len__(self) -> int:
        return len(self.photo)

    def split(self, held_out: float = HELD_OUT, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
        """The same identity split as ``LabelSet.split`` (same draw for the same identities)."""
        from fiqa_compile.train.data import LabelSet

        return LabelSet.split(self, held_out, seed)  # type: ignore[arg-type]


def samples_from_faces(root: str | Path, versions: int = 1, seed: int = 0, max_steps: int = 2,
                       limit: int | None = None, progress: bool = False, fr="dlib") -> FolderSamples:
    """Detect, align and embed every photo of ``root/<identity>/*`` with clean + ``versions`` degraded versions.

    The same code path as ``fiqa-labels`` (RetinaFace, most central face, aligned canvas, seeded chains,
    dlib 68 landmarks), so the comparisons match a label set's. ``fr`` (a name of ``fiqa_compile.fr.FR_MODELS``
    or a recogniser from ``create_recognizer``) embeds each version: dlib's ResNet from the canvas and its 68
    landmarks (as fiqa-labels), MobileFaceNet from the 112x112 crop cut from the canvas. The 68 landmarks come
    from dlib's predictor whichever model embeds. Slow: about a tenth of a second per version per photo on one
    core. Photos without a face are listed in ``failures`` and left out.
    """
    import cv2

    from fiqa_calibration.crops import central_face, chain_json, face_versions
    from fiqa_calibration.datasets import FaceFolder
    from fiqa_compile.fr import AlignedFace, create_recognizer
    from fiqa_compile.fr.dlib_fr import DlibFaceRecognizer
    from fiqa_sdk.detection import RetinaFaceDetector
    from fiqa_sdk.measures import inter_ocular_distance

    root = Path(root)
    if not root.is_dir():
        raise PairError(f"--faces {root} is not a directory; give a folder of <identity>/<photo> images")
    items = [(str(p), ident) for p, ident in FaceFolder(root).items]
    if not items:
        raise PairError(f"{root} holds no images in <identity>/ sub-folders")
    if limit:
        keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:limit])
        items = [items[i] for i in keep]
    det = RetinaFaceDetector(score_threshold=0.6, max_side=320, threads=1,  # as fiqa-labels
                             refine_landmarks=False)
    recognizer = create_recognizer(fr) if isinstance(fr, str) else fr
    landmarks = recognizer.dlib if recognizer.name == "dlib" else DlibFaceRecognizer()  # 68 points for every model
    cols: dict[str, list] = {k: [] for k in ("crop", "lm68", "identity", "photo", "version", "severity", "chain",
                                             "emb", "source_iod")}
    failures: list[str] = []
    iterator = enumerate(items)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(items), desc="embedding faces", mininterval=5)
    for photo, (path, ident) in iterator:
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            failures.append(f"{path}: unreadable")
            continue
        dets = det(frame)
        if not dets:
            failures.append(f"{path}: no face detected")
            continue
        face = central_face(dets, frame.shape)
        fvs, lm_canvas, _ = face_versions(frame, lambda _f, face=face: [face], photo, versions, seed, max_steps,
                                          landmarks68=landmarks.landmarks68)
        iod = inter_ocular_distance(face.landmarks)
        embs = recognizer.embed_faces([AlignedFace(fv.crop, fv.canvas, lm_canvas) for fv in fvs])
        for fv, e in zip(fvs, embs):
            cols["crop"].append(fv.crop)
            cols["lm68"].append(fv.lm68)
            cols["identity"].append(ident)
            cols["photo"].append(photo)
            cols["version"].append(fv.version)
            cols["severity"].append(fv.severity)
            cols["chain"].append(chain_json(fv.chain))
            cols["emb"].append(e)
            cols["source_iod"].append(iod)
    if not cols["photo"]:
        raise PairError(f"no face found in any of the {len(items)} photos under {root}")
    return FolderSamples(
        crop=np.asarray(cols["crop"], np.uint8), lm68=np.asarray(cols["lm68"], np.float32),
        identity=np.asarray(cols["identity"]), photo=np.asarray(cols["photo"], np.int64),
        version=np.asarray(cols["version"], np.int64), severity=np.asarray(cols["severity"], np.float32),
        chain=np.asarray(cols["chain"], dtype=str), emb=np.asarray(cols["emb"], np.float32),
        source_iod=np.asarray(cols["source_iod"], np.float64), paths=[p for p, _ in items], failures=failures,
        fr=recognizer.name)


def embed_stored_crops(samples, rows: np.ndarray, recognizer, progress: bool = False,
                       chunk: int = 256) -> np.ndarray:
    """[N, dim] embeddings of ``samples.crop`` at ``rows`` by a crop-only FR model (NaN at the other rows).

    A label set stores every version's 112x112 crop, the very crop :func:`samples_from_faces` gives MobileFaceNet,
    so embedding the stored crops compares the label set's samples as a face folder would, without detecting
    again. A model that needs the frame and its landmarks (dlib) cannot be run this way: its embeddings are the
    label set's own ``emb``.
    """
    from fiqa_compile.fr import AlignedFace

    if not recognizer.crop_only:
        raise PairError(f"{recognizer.name} embeds from the frame and its 68 landmarks, which a label set does not "
                        "store; use the label set's own embeddings, or evaluate the face folder (--faces)")
    rows = np.asarray(rows, dtype=np.int64)
    emb = np.full((len(samples.photo), recognizer.dim), np.nan, np.float32)
    starts = range(0, len(rows), chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"embedding crops ({recognizer.name})", unit="chunk", mininterval=5)
    for i in starts:
        r = rows[i:i + chunk]
        emb[r] = recognizer.embed_faces([AlignedFace(c) for c in samples.crop[r]])
    return emb


def chain_downscale(chain: str) -> float:
    """The resolution divisor of a serialised degradation chain: the downscale step's factor (1 without one)."""
    if not chain:
        return 1.0
    from fiqa_calibration.degradations import parameters

    factor = 1.0
    for step in json.loads(chain)["steps"]:
        if step["kind"] == "downscale":
            factor *= float(parameters("downscale", step["severity"])["factor"])
    return factor
