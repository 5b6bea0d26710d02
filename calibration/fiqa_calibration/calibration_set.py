"""The INT8 calibration set: a few hundred aligned faces chosen to cover every quality level and degradation.

Activation ranges are only as good as the data that produced them: calibrating on clean faces clips the
activations of blurred, dark or noisy faces -- exactly the ones a quality gate must score correctly. So the set
is *stratified*: faces are grouped by (degradation type, quality level) and drawn round-robin across the groups,
300-500 faces in all (:data:`DEFAULT_SIZE`), seeded.

Two guards refuse sets that would calibrate silently wrong ranges:

* too few faces (< ``min_size``, default :data:`MIN_SIZE`) -- ranges then follow individual images;
* not aligned faces -- a sample of crops is padded and run through the face detector, and a crop counts only
  if a face is found *with its five landmarks on the ArcFace template* (so raw photos, unaligned crops, noise,
  flat frames and BGR/RGB-scrambled arrays are all caught). Uniform (flat) crops are counted over the whole set.

Tensors come from :func:`fiqa_sdk.preprocess.faces_to_tensor`, the device's own preprocessing.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112, SPEC, check_spec, faces_to_tensor

log = logging.getLogger(__name__)

DEFAULT_SIZE = 400
MIN_SIZE = 100
CLEAN = "clean"


class CalibrationSetError(ValueError):
    """Faces that would make a misleading INT8 calibration; the message says what is wrong and the fix."""


# ------------------------------------------------------------------------------------------- validation
def _check_faces(faces: np.ndarray) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[1:] != (SPEC.size, SPEC.size, 3):
        raise CalibrationSetError(f"expected aligned faces [N, {SPEC.size}, {SPEC.size}, 3] BGR uint8, got shape "
                                  f"{faces.shape}; align detections with fiqa_sdk.align_face first")
    if faces.dtype != np.uint8:
        raise CalibrationSetError(f"aligned faces must be uint8 BGR images, got {faces.dtype} (pass the crops, "
                                  "not the normalised tensors)")
    return faces


def quality_levels(severity: np.ndarray, num_levels: int = 4) -> np.ndarray:
    """Bin per-face degradation severity (0 = clean, larger = worse) into ``num_levels`` quality levels.

    Level 0 holds the clean faces (severity 0) when there are any; the degraded ones are split at severity
    quantiles so each level has about as many faces. Fewer distinct severities than levels -> one level each.
    """
    s = np.asarray(severity, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all() or (s < 0).any():
        raise CalibrationSetError("severity must be a 1-D array of finite values >= 0 (0 = clean)")
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    levels = np.zeros(len(s), dtype=np.int64)
    degraded = s > 0
    has_clean = bool((~degraded).any())
    n_bins = num_levels - 1 if has_clean else num_levels
    if degraded.any() and n_bins > 0:
        uniq = np.unique(s[degraded])
        if len(uniq) <= n_bins:
            edges = uniq[1:]
        else:
            edges = np.unique(np.quantile(s[degraded], np.linspace(0, 1, n_bins + 1)[1:-1]))
        levels[degraded] = np.searchsorted(edges, s[degraded], side="right") + (1 if has_clean else 0)
    return levels


def stratified_indices(kinds: np.ndarray, levels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of ``size`` faces drawn round-robin over the (kind, level) strata, each stratum shuffled (seeded).

    Every stratum contributes equally until it runs out; the rest are filled from the larger ones.
    """
    rng = np.random.default_rng(seed)
    keys = sorted({(str(k), int(v)) for k, v in zip(kinds, levels)})
    pools = []
    for k, v in keys:
        idx = np.flatnonzero((kinds == k) & (levels == v))
        pools.append(list(rng.permutation(idx)))
    out: list[int] = []
    while len(out) < size and any(pools):
        for p in pools:
            if p and len(out) < size:
                out.append(int(p.pop()))
    return np.array(sorted(out), dtype=np.int64)


@dataclass
class RedetectReport:
    checked: int
    found: int
    median_landmark_err: float  # px at 112x112, over the faces found
    failures: list[int] = field(default_factory=list)  # indices into the checked faces

    @property
    def rate(self) -> float:
        return self.found / self.checked if self.checked else 0.0


def redetect_aligned(faces: np.ndarray, detector, max_landmark_err: float = 15.0, pad: int = 28) -> RedetectReport:
    """Run ``detector`` on each aligned crop (padded by ``pad`` px so the face is not cut by the frame edge);
    a crop passes when some detection's five landmarks lie within ``max_landmark_err`` px (mean) of the ArcFace
    template -- i.e. it is a face *and* it is aligned the way the device aligns."""
    errs, fails = [], []
    for i, crop in enumerate(faces):
        canvas = cv2.copyMakeBorder(np.ascontiguousarray(crop), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        dets = detector(canvas)
        best = min((float(np.linalg.norm(d.landmarks - pad - ARCFACE_TEMPLATE_112, axis=1).mean()) for d in dets),
                   default=np.inf)
        if best <= max_landmark_err:
            errs.append(best)
        else:
            fails.append(i)
    return RedetectReport(checked=len(faces), found=len(errs),
                          median_landmark_err=float(np.median(errs)) if errs else float("nan"), failures=fails)


# -------------------------------------------------------------------------------------------- the set
@dataclass
class CalibrationSet:
    """Selected faces and the device tensors made from them."""

    faces: np.ndarray        # [N,112,112,3] uint8 BGR, aligned
    kinds: np.ndarray        # [N] degradation type ("clean" for none)
    levels: np.ndarray       # [N] quality level, 0 = best
    source_index: np.ndarray  # [N] row in the pool it was drawn from
    meta: dict

    @property
    def tensors(self) -> np.ndarray:
        """[N,3,112,112] float32 exactly as the device preprocesses (computed on demand: 4x the bytes of faces)."""
        return faces_to_tensor(self.faces)

    def __len__(self) -> int:
        return len(self.faces)

    def strata(self) -> dict[str, int]:
        keys = [f"{k}/L{v}" for k, v in zip(self.kinds, self.levels)]
        return dict(sorted((k, keys.count(k)) for k in set(keys)))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, faces=self.faces, kinds=self.kinds.astype(str), levels=self.levels,
                            source_index=self.source_index, meta=np.array(json.dumps(self.meta)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationSet":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration set {path} not found; build one with build_calibration_set()")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            check_spec(meta.get("spec", {}))
            return cls(faces=_check_faces(z["faces"]), kinds=z["kinds"], levels=z["levels"],
                       source_index=z["source_index"], meta=meta)


def build_calibration_set(faces: np.ndarray, kinds: Sequence[str] | np.ndarray | None = None,
                          severity: Sequence[float] | np.ndarray | None = None, *, size: int = DEFAULT_SIZE,
                          min_size: int = MIN_SIZE, num_levels: int = 4, seed: int = 0, detector=None,
                          verify: bool = True, verify_sample: int = 48, min_redetect_rate: float = 0.7,
                          max_landmark_err: float = 15.0, max_flat_fraction: float = 0.05) -> CalibrationSet:
    """Choose a stratified calibration set of ``size`` faces from a pool of aligned faces.

    ``kinds``: each face's degradation type (``"clean"`` for none; None -> all ``"unknown"``).
    ``severity``: each face's degradation strength, 0 = clean (None -> all 0); binned by :func:`quality_levels`.
    ``detector``: a :mod:`fiqa_sdk` detector for the face check (default ``create_detector("retinaface")``);
    ``verify=False`` skips that check -- only for pools already checked some other way.
    A pool smaller than ``size`` is used whole if it has at least ``min_size`` faces.
    """
    faces = _check_faces(faces)
    n = len(faces)
    if min_size < 1 or size < min_size:
        raise ValueError(f"need 1 <= min_size <= size, got min_size={min_size}, size={size}")
    if n < min_size:
        raise CalibrationSetError(f"only {n} aligned faces given; an INT8 calibration set needs at least {min_size} "
                                  f"(300-500 recommended, spread over quality levels and degradation types). Add "
                                  "faces or degraded versions of them (fiqa_calibration.degradations)")
    kinds_arr = np.array(["unknown"] * n if kinds is None else [str(k) for k in kinds])
    sev = np.zeros(n) if severity is None else np.asarray(severity, dtype=np.float64)
    if len(kinds_arr) != n or len(sev) != n:
        raise CalibrationSetError(f"{n} faces but {len(kinds_arr)} kinds and {len(sev)} severities")
    flat = faces.reshape(n, -1).std(axis=1) < 2.0
    if flat.mean() > max_flat_fraction:
        raise CalibrationSetError(f"{int(flat.sum())} of {n} images are uniform (pixel std < 2 levels): blank or "
                                  "flat frames, not faces. Remove them; the calibration ranges would be wrong")
    levels = quality_levels(sev, num_levels)
    idx = stratified_indices(kinds_arr, levels, min(size, n), seed)
    chosen = faces[idx]

    report = None
    if verify:
        if detector is None:
            from fiqa_sdk.detection import create_detector

            detector = create_detector("retinaface")
        rng = np.random.default_rng(seed + 1)
        probe = rng.choice(len(chosen), size=min(verify_sample, len(chosen)), replace=False)
        report = redetect_aligned(chosen[probe], detector, max_landmark_err=max_landmark_err)
        if report.rate < min_redetect_rate:
            raise CalibrationSetError(
                f"only {report.found} of {report.checked} sampled images re-detect as faces aligned to the ArcFace "
                f"template (need {min_redetect_rate:.0%}). These are not aligned 112x112 BGR face crops: use "
                "fiqa_sdk.create_detector() + fiqa_sdk.align_face on the photos (and keep OpenCV's BGR order)")
    if len(chosen) < size:
        log.warning("pool has %d faces, fewer than the requested %d: using all of them", n, size)
    meta = {"spec": SPEC.to_dict(), "seed": seed, "requested_size": size, "pool_size": n, "num_levels": num_levels,
            "level_edges_from": "severity quantiles (0 = clean)",
            "redetect": None if report is None else {"checked": report.checked, "found": report.found,
                                                      "median_landmark_err_px": report.median_landmark_err}}
    cs = CalibrationSet(faces=chosen, kinds=kinds_arr[idx], levels=levels[idx], source_index=idx, meta=meta)
    cs.meta["strata"] = cs.strata()
    return cs


# ------------------------------------------------------------------------------ a pool from shipped photos
@dataclass
class FacePool:
    faces: np.ndarray    # [N,112,112,3] uint8 BGR aligned
    kinds: np.ndarray    # [N] str
    severity: np.ndarray  # [N] float, 0 = clean
    person: np.ndarray   # [N] int, which detected face it came from


def sample_pool(detector=None, severities: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                kinds: Sequence[str] | None = None, seed: int = 0,
                photos: Sequence[str] = ("t1", "grace_hopper", "tom_hanks", "astronaut")) -> FacePool:
    """Aligned faces from the photos pip packages ship (:mod:`fiqa_sdk.samples`), clean plus every degradation
    at every severity: 9 faces x (1 + 12 x 4) = 441 with the defaults. For demos, tests and benchmarks when no
    face folder is around; degradations are applied on a margin canvas, as :mod:`fiqa_calibration.crops` does.
    :func:`fiqa_calibration.shipped_faces.shipped_pool` gives the same pool from the canvases fiqa-compile ships
    (no photo package, no detector)."""
    from fiqa_calibration.crops import aligned_canvas
    from fiqa_sdk.detection import create_detector
    from fiqa_sdk.samples import load_sample

    detector = detector or create_detector("retinaface", max_side=640, refine_landmarks=False)  # as the default compile made it
    canvases = []
    for name in photos:
        img = load_sample(name)
        canvases += [aligned_canvas(img, det.landmarks)[0] for det in detector(img)]
    if not canvases:
        raise CalibrationSetError(f"no faces detected in the sample photos {list(photos)}")
    return pool_from_canvases(canvases, severities, kinds, seed)


def pool_from_canvases(canvases: Sequence[np.ndarray], severities: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                       kinds: Sequence[str] | None = None, seed: int = 0) -> FacePool:
    """Each aligned margin canvas (:func:`fiqa_calibration.crops.aligned_canvas`) clean plus every degradation at
    every severity, cut to the 112x112 crop; canvas ``i`` is person ``i`` and seeds its degradations with
    ``seed + 1000 * i``."""
    from fiqa_calibration.crops import crop_from_canvas
    from fiqa_calibration.degradations import DEGRADATION_TYPES, degrade

    kinds = tuple(kinds) if kinds is not None else DEGRADATION_TYPES
    out_f, out_k, out_s, out_p = [], [], [], []
    for person, canvas in enumerate(canvases):
        versions = [(CLEAN, 0.0, canvas)] + [
            (kind, float(sv), degrade(canvas, kind, float(sv), seed=seed + 1000 * person + j))
            for j, kind in enumerate(kinds) for sv in severities]
        for kind, sv, img_v in versions:
            out_f.append(crop_from_canvas(img_v))
            out_k.append(kind)
            out_s.append(sv)
            out_p.append(person)
    if not out_f:
        raise CalibrationSetError("no face canvases to build a pool from")
    return FacePool(faces=np.stack(out_f), kinds=np.array(out_k), severity=np.array(out_s), person=np.array(out_p))
