"""A utility scale that means something: the student's raw utility output mapped to the chance of being recognised.

    python -m fiqa_compile.scale --frames runs/frames/train          # the embedded student; writes its student.json

**What the scale says.** utility(x) = 100 x the probability that a genuine comparison of face x with a clean
(undegraded) photo of the same person succeeds at FMR 1e-3, averaged over dlib's ResNet and MobileFaceNet. So
"utility 90" means about 9 in 10 such comparisons match. It is fitted on a frame set (:mod:`.labels.frame_set`:
photos degraded in the frame, detected and aligned as the device does, embedded by both FR models) of people on the
training side of the project's split, never the held-out people (``fiqa_calibration.held_out_people``) the
benchmarks measure on. The maps are fitted on all of them; what the fit is judged by (the reliability diagrams)
and what thresholds are read from (the gate curves) is measured on the training-side people the student did not
learn from (its own held-out share, ``student.json`` ``config.held_out``), with maps fitted without them, so they
see the student as an unseen person's face will. (On the benchmark's held-out people, a map fitted on all
training-side people was better calibrated than one fitted on the student's held-out share alone: 0.033 against
0.062 mean |predicted - observed| per FR model; ``bench/results/utility_scale.md``.)

**How.** Probes: every detected face (clean and degraded) of a person with at least two detected clean photos (at
most :data:`MAX_PHOTOS_PER_PERSON` photos a person, seeded, so a much-photographed person does not become the fit).
Comparisons: each probe against each of the person's *other* clean photos (at most :data:`MAX_REFERENCES`).
Threshold per FR model: FMR 1e-3 over :data:`IMPOSTORS` impostor comparisons of the same kind (a probe against a
clean photo of someone else). A probe's outcome is its share of successful comparisons, per FR model; the map is
the isotonic regression (pool-adjacent-violators, one weight per face) of the two models' mean outcome on the raw
output, with knots at the pooled blocks' centres (at most :data:`MAX_KNOTS`) and linear between them: what the
device applies with ``np.interp``. Each FR model's own map is fitted too (``per_fr_model``): the two recognisers
differ (MobileFaceNet matches more degraded faces than dlib), so the average is not exact for either one.

**What else is stored** (``student.json`` ``scale``; ``fiqa-compile`` copies the map into every manifest it builds
from the student, and the rest into the report):

* the reliability diagram per FR model over 10 bins (predicted vs observed, with counts) on those held-out people,
  predicted by the maps fitted on everyone else (out of fold, over folds of people, for a student without a
  held-out share);
* gate curves over utility thresholds 0..100 (every half point): the share of clean faces the score checks reject
  (and with the gate's default measure checks too), the share of all faces, and per FR model the FNMR at FMR 1e-3
  among genuine photo pairs (side b degraded in half of them) whose two faces are both kept, with the share of
  pairs kept. The perceptual threshold in them is fixed: the clean faces' :data:`PERCEPTUAL_CLEAN_REJECT` quantile.
  ``fiqa-compile --gate-target reject=R`` (the share of undegraded captures the gate may reject) / ``fnmr=F`` reads
  its thresholds from these curves (:func:`thresholds_for_target`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCALE_VERSION = 1
FMR = 1e-3
FR_MODELS = ("dlib", "mobilefacenet")
MAX_KNOTS = 64
MAX_PHOTOS_PER_PERSON = 20
MAX_REFERENCES = 30
MAX_PAIRS_PER_PERSON = 30
IMPOSTORS = 300_000
FOLDS = 5
BINS = 10
# utility thresholds of the gate curves (0-100): half points, since undegraded faces crowd the top of the scale
GRID = tuple(float(t) for t in np.arange(0, 100.01, 0.5))
MIN_KEPT_PAIRS = 20  # below this an FNMR of the kept pairs is not reported (null)
PERCEPTUAL_CLEAN_REJECT = 0.01  # the perceptual check's share of clean faces under a --gate-target: a guard
# against gross damage (on held-out people the utility score alone does more for the FNMR of kept pairs)
RELEASE_GAP = 10.0  # hysteresis: release this far below accept, as the Youden thresholds do
DEFAULT_GATE_TARGET = "reject=0.15"  # what fiqa-compile uses for a student with a scale when none is given
SPLITS = ("all", "student-held-out")

UTILITY_MEANING = ("100 x the probability that a genuine comparison of this face with a clean (undegraded) photo of "
                   "the same person succeeds at FMR {fmr:g}, averaged over {models}: utility 90 means about 9 in 10 "
                   "such comparisons match. An isotonic (monotone) map from the student's raw utility output to the "
                   "success rate observed on {faces} faces ({photos} photos, clean and degraded in the frame, "
                   "detected as the device does) of {people} people on the training side of the split, "
                   "{comparisons} genuine comparisons; per_fr_model holds each FR model's own map")


class ScaleError(ValueError):
    """The data cannot give a scale (too few people or faces), or a gate target cannot be met."""


# ------------------------------------------------------------------------------------------------- isotonic fit
def pav(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing sequence closest to ``y`` in weighted least squares."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    values, weights, sizes = [], [], []
    for v, wt in zip(y.tolist(), w.tolist()):
        values.append(v)
        weights.append(wt)
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            v2, w2, n2 = values.pop(), weights.pop(), sizes.pop()
            tot = weights[-1] + w2
            values[-1] = (values[-1] * weights[-1] + v2 * w2) / tot if tot > 0 else (values[-1] + v2) / 2
            weights[-1] = tot
            sizes[-1] += n2
    return np.repeat(values, sizes)


def isotonic_knots(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
                   max_knots: int = MAX_KNOTS) -> tuple[np.ndarray, np.ndarray]:
    """Knots (strictly increasing x, non-decreasing y) of the isotonic regression of ``y`` on ``x``.

    Tied x are pooled first, then the points are grouped into ``max_knots`` bins of equal weight along x, then
    pool-adjacent-violators runs over the bins; each pooled block gives one knot at its weighted centre. Linear
    between knots (``np.interp``), flat beyond them. A fit without any trend is two knots at the same height.
    """
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if not (len(x) == len(y) == len(w)) or len(x) < 2:
        raise ScaleError(f"an isotonic fit needs at least 2 points with x, y and w alike, got {len(x)}/{len(y)}/{len(w)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise ScaleError("x, y and the weights must be finite (weights >= 0)")
    ux, inv = np.unique(x, return_inverse=True)
    if len(ux) < 2:
        raise ScaleError("every raw output is the same: no map can be fitted to a constant score")
    uw = np.bincount(inv, w)
    uy = np.bincount(inv, w * y) / np.where(uw > 0, uw, 1)
    keep = uw > 0
    ux, uy, uw = ux[keep], uy[keep], uw[keep]
    bins = max(2, min(int(max_knots), len(ux)))
    before = np.cumsum(uw) - uw
    group = np.minimum((before / uw.sum() * bins).astype(int), bins - 1)
    gw = np.bincount(group, uw, bins)
    used = gw > 0
    gx = (np.bincount(group, uw * ux, bins) / np.where(used, gw, 1))[used]
    gy = (np.bincount(group, uw * uy, bins) / np.where(used, gw, 1))[used]
    gw = gw[used]
    fitted = pav(gy, gw)
    # one knot per pooled block: runs of equal fitted values
    starts = np.flatnonzero(np.r_[True, np.diff(fitted) != 0])
    bw = np.add.reduceat(gw, starts)
    kx = np.add.reduceat(gw * gx, starts) / bw
    ky = fitted[starts]
    if len(kx) == 1:  # no trend at all: a flat map over the data's range
        kx, ky = np.array([ux[0], ux[-1]]), np.array([ky[0], ky[0]])
    return kx, ky


# ------------------------------------------------------------------------------------------------- outcomes
@dataclass
class Outcomes:
    """Per probe face: its frame-set row, person, photo, version, and per FR model its share of successful
    genuine comparisons with the person's other clean photos (``success[:, k]`` for ``fr_models[k]``)."""

    rows: np.ndarray
    identity: np.ndarray
    photo: np.ndarray
    version: np.ndarray
    success: np.ndarray
    references: np.ndarray   # comparisons per probe
    thresholds: dict[str, float]
    impostors: int
    fr_models: tuple[str, ...]

    @property
    def mean_success(self) -> np.ndarray:
        return self.success.mean(1)

    def subset(self, keep: np.ndarray) -> Outcomes:
        return Outcomes(self.rows[keep], self.identity[keep], self.photo[keep], self.version[keep],
                        self.success[keep], self.references[keep], self.thresholds, self.impostors, self.fr_models)


def embeddings(data: dict[str, np.ndarray], fr: str) -> np.ndarray:
    from fiqa_compile.labels.recognition import embeddings as unit_embeddings

    return unit_embeddings(data, fr).astype(np.float64)


def probe_threshold(e: np.ndarray, probes: np.ndarray, clean: np.ndarray, identity: np.ndarray, fmr: float,
                    n: int, rng: np.random.Generator) -> tuple[float, int]:
    """Similarity threshold at ``fmr`` over ``n`` random (probe, clean photo of another person) comparisons."""
    from fiqa_compile.eval.edc import similarity_threshold

    a, b = rng.choice(probes, n), rng.choice(clean, n)
    other = identity[a] != identity[b]
    s = np.einsum("ij,ij->i", e[a[other]], e[b[other]])
    return similarity_threshold(s, fmr), int(other.sum())


def select_photos(data: dict[str, np.ndarray], rows: np.ndarray, seed: int,
                  max_photos: int = MAX_PHOTOS_PER_PERSON) -> np.ndarray:
    """``rows`` restricted to at most ``max_photos`` photos a person (a seeded choice among the larger ones)."""
    rng = np.random.default_rng([seed, 11])
    ident, photo = data["identity"][rows], data["photo"][rows]
    keep = np.ones(len(rows), bool)
    for person in np.unique(ident):
        photos = np.unique(photo[ident == person])
        if len(photos) > max_photos:
            chosen = rng.choice(photos, max_photos, replace=False)
            keep &= ~((ident == person) & ~np.isin(photo, chosen))
    return rows[keep]


def face_outcomes(data: dict[str, np.ndarray], rows: np.ndarray, fr_models=FR_MODELS, fmr: float = FMR,
                  seed: int = 0, impostors: int = IMPOSTORS, max_photos: int = MAX_PHOTOS_PER_PERSON,
                  max_references: int = MAX_REFERENCES) -> Outcomes:
    """The genuine-comparison outcomes of every probe among ``rows`` (detected rows of a frame set; see the module
    docstring for the protocol). Raises :class:`ScaleError` when no person has two clean photos."""
    det = data["detected"].astype(bool)
    rows = np.asarray(rows)[det[np.asarray(rows)]]
    ident, photo, version = data["identity"], data["photo"], data["version"]
    clean_all = rows[version[rows] == 0]
    counts = {p: n for p, n in zip(*np.unique(ident[clean_all], return_counts=True))}
    multi = np.array([counts.get(i, 0) >= 2 for i in ident[rows]], bool)
    probes = select_photos(data, rows[multi], seed, max_photos)
    if len(probes) == 0:
        raise ScaleError(f"no person among these {len(np.unique(ident[rows]))} people has two detected clean photos: "
                         "a genuine comparison needs a second photo of the person")
    probes = probes[np.argsort(ident[probes], kind="stable")]  # grouped by person
    _, starts = np.unique(ident[probes], return_index=True)
    stops = np.r_[starts[1:], len(probes)]
    references = []  # per person: its clean photos among the probes, a seeded subset beyond the cap
    for start, stop in zip(starts, stops):
        refs = probes[start:stop][version[probes[start:stop]] == 0]
        if len(refs) > max_references + 1:
            refs = np.sort(np.random.default_rng([seed, 19, int(start)]).choice(refs, max_references + 1,
                                                                                 replace=False))
        references.append(refs)
    success = np.zeros((len(probes), len(fr_models)))
    refs_n = np.zeros(len(probes), int)
    thresholds, n_imp = {}, 0
    for k, fr in enumerate(fr_models):
        e = embeddings(data, fr)
        thr, n_imp = probe_threshold(e, probes, clean_all, ident, fmr, impostors, np.random.default_rng([seed, 17, k]))
        thresholds[fr] = float(thr)
        for refs, start, stop in zip(references, starts, stops):
            p_rows = probes[start:stop]
            valid = photo[p_rows][:, None] != photo[refs][None, :]  # never the probe's own photo
            valid &= np.cumsum(valid, 1) <= max_references
            hits = ((e[p_rows] @ e[refs].T) >= thr) & valid
            n = valid.sum(1)
            success[start:stop, k] = hits.sum(1) / np.maximum(n, 1)
            refs_n[start:stop] = n
    return Outcomes(probes, ident[probes], photo[probes], version[probes], success, refs_n, thresholds, n_imp,
                    tuple(fr_models)).subset(refs_n > 0)


# ------------------------------------------------------------------------------------------------- reliability
def reliability(pred: np.ndarray, observed: np.ndarray, bins: int = BINS) -> dict:
    """Predicted (0-1) vs observed over ``bins`` equal-width bins of the prediction, with counts;
    ``mean_abs_error`` is the plain mean of |predicted - observed| over the non-empty bins, ``ece`` the mean
    weighted by the bins' counts."""
    pred, observed = np.asarray(pred, dtype=np.float64), np.asarray(observed, dtype=np.float64)
    idx = np.clip((pred * bins).astype(int), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        rows.append({"lo": b / bins, "hi": (b + 1) / bins, "n": n,
                     "predicted": float(pred[m].mean()) if n else None,
                     "observed": float(observed[m].mean()) if n else None})
    full = [r for r in rows if r["n"]]
    gaps = np.array([abs(r["predicted"] - r["observed"]) for r in full])
    counts = np.array([r["n"] for r in full], float)
    return {"bins": rows, "mean_abs_error": float(gaps.mean()) if len(gaps) else None,
            "ece": float((gaps * counts).sum() / counts.sum()) if len(gaps) else None, "faces": int(len(pred))}


def fit_maps(raw: np.ndarray, outcomes: Outcomes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The average map (key ``None``) and each FR model's own, knots in 0-100 units."""
    maps = {None: isotonic_knots(raw, outcomes.mean_success)}
    for k, fr in enumerate(outcomes.fr_models):
        maps[fr] = isotonic_knots(raw, outcomes.success[:, k])
    return {k: (x, 100.0 * y) for k, (x, y) in maps.items()}


def out_of_fold(raw: np.ndarray, outcomes: Outcomes, folds: int = FOLDS, seed: int = 0) -> dict:
    """Reliability diagrams with each fold of people predicted by the maps fitted on the other folds."""
    people = np.unique(outcomes.identity)
    if len(people) < folds:
        raise ScaleError(f"{len(people)} people with two photos are too few for {folds} folds of people")
    fold_of = dict(zip(np.random.default_rng([seed, 23]).permutation(people), np.arange(len(people)) % folds))
    fold = np.array([fold_of[i] for i in outcomes.identity])
    avg = np.zeros(len(raw))
    own = np.zeros((len(raw), len(outcomes.fr_models)))
    for f in range(folds):
        test = fold == f
        maps = fit_maps(raw[~test], outcomes.subset(~test))
        avg[test] = np.interp(raw[test], *maps[None]) / 100
        for k, fr in enumerate(outcomes.fr_models):
            own[test, k] = np.interp(raw[test], *maps[fr]) / 100
    out = {"how": f"out of fold: {folds} folds of people, each predicted by the maps fitted on the others",
           "average": {"scale": reliability(avg, outcomes.mean_success)}}
    for k, fr in enumerate(outcomes.fr_models):
        out[fr] = {"scale": reliability(avg, outcomes.success[:, k]), "own": reliability(own[:, k], outcomes.success[:, k])}
    return out


# ------------------------------------------------------------------------------------------------- gate curves
def genuine_pairs(data: dict[str, np.ndarray], rows: np.ndarray, seed: int = 0,
                  max_per_person: int = MAX_PAIRS_PER_PERSON) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) rows of genuine photo pairs among ``rows``: side a clean, side b clean or, in half the pairs, a
    degraded version of its photo (seeded), at most ``max_per_person`` pairs a person."""
    from fiqa_compile.eval.pairs import genuine_photo_pairs

    rng = np.random.default_rng([seed, 29])
    clean = rows[data["version"][rows] == 0]
    pairs = genuine_photo_pairs(clean, data["identity"][clean], rng, max_per_person)
    if len(pairs) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    swap = rng.random(len(pairs)) < 0.5
    a = np.where(swap, pairs[:, 1], pairs[:, 0])
    b = np.where(swap, pairs[:, 0], pairs[:, 1])
    versions: dict[int, list[int]] = {}
    for r in rows[data["version"][rows] > 0]:
        versions.setdefault(int(data["photo"][r]), []).append(int(r))
    for k in np.flatnonzero(rng.random(len(b)) < 0.5):
        options = versions.get(int(data["photo"][b[k]]))
        if options:
            b[k] = options[int(rng.integers(len(options)))]
    return a, b


def measure_pass(data: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Whether each face passes the capture gate's default measure checks (size, pose, exposure, sharpness; the
    frame-edge check is left out: a frame set keeps no frame sizes), the score checks off."""
    from fiqa_sdk.gate import CaptureGate, FaceObservation, GateConfig
    from fiqa_sdk.measures import image_measures, landmark_measures

    gate = CaptureGate(GateConfig(utility_accept=None, perceptual_accept=None, max_outside_fraction=None))
    out = np.zeros(len(rows), bool)
    for i, r in enumerate(rows):
        measures = image_measures(data["crop"][r])
        try:
            measures.update(landmark_measures(data["lm5"][r]))
        except ValueError:
            continue  # degenerate landmarks: the gate could not judge the pose, so it rejects
        obs = FaceObservation(0, i, 0.0, None, None, {}, measures)
        out[i] = gate.assess(obs).accepted
    return out


def gate_curves(data: dict[str, np.ndarray], rows: np.ndarray, utility: np.ndarray, perceptual: np.ndarray,
                thresholds: dict[str, float], seed: int = 0) -> dict:
    """The gate curves over :data:`GRID` (see the module docstring). ``utility``/``perceptual``: 0-100 scores of
    ``rows`` (detected rows of the fitting people)."""
    at = {int(r): i for i, r in enumerate(rows)}
    version = data["version"][rows]
    clean = version == 0
    if clean.sum() < 20:
        raise ScaleError(f"{int(clean.sum())} clean faces are too few for the gate curves")
    p_accept = float(np.quantile(perceptual[clean], PERCEPTUAL_CLEAN_REJECT))
    p_ok = perceptual >= p_accept
    measures_ok = measure_pass(data, rows[clean])
    a, b = genuine_pairs(data, rows, seed)
    ia = np.array([at[int(r)] for r in a], int)
    ib = np.array([at[int(r)] for r in b], int)
    fails = {}
    for k, fr in enumerate(FR_MODELS):
        e = embeddings(data, fr)
        fails[fr] = np.einsum("ij,ij->i", e[a], e[b]) < thresholds[fr]
    grid = np.asarray(GRID, float)
    out = {"thresholds": list(GRID), "perceptual_accept": round(p_accept, 2),
           "perceptual_rule": f"perceptual_accept at the clean faces' {PERCEPTUAL_CLEAN_REJECT:.0%} quantile",
           "clean_faces": int(clean.sum()), "faces": int(len(rows)),
           "genuine_pairs": int(len(a)), "genuine_pairs_degraded": int(np.sum(version[ib] > 0)),
           "reject_clean_utility": [], "reject_clean": [], "reject_clean_gate": [], "reject_all": [],
           "pairs_kept": [], "fnmr_kept": {fr: [] for fr in FR_MODELS},
           "fnmr_all": {fr: float(fails[fr].mean()) if len(a) else None for fr in FR_MODELS}}
    for t in grid:
        u_ok = utility >= t
        kept = u_ok & p_ok
        out["reject_clean_utility"].append(float(1 - u_ok[clean].mean()))
        out["reject_clean"].append(float(1 - kept[clean].mean()))
        out["reject_clean_gate"].append(float(1 - (kept[clean] & measures_ok).mean()))
        out["reject_all"].append(float(1 - kept.mean()))
        both = kept[ia] & kept[ib]
        out["pairs_kept"].append(float(both.mean()) if len(a) else 0.0)
        for fr in FR_MODELS:
            out["fnmr_kept"][fr].append(float(fails[fr][both].mean()) if both.sum() >= MIN_KEPT_PAIRS else None)
    return _rounded(out)


def _rounded(obj, digits: int = 5):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------- gate targets
@dataclass(frozen=True)
class GateTarget:
    """``reject=R``: the share of undegraded captures the gate may reject (its per-photo verdict: the score checks
    and its default size, pose, exposure and sharpness checks); ``fnmr=F``: the FNMR at the scale's FMR needed among
    genuine pairs whose two faces are both kept (mean over the scale's FR models, or one model's: ``fnmr:dlib=F``)."""

    kind: str
    value: float
    fr_model: str | None = None

    @classmethod
    def parse(cls, text: str) -> GateTarget:
        key, sep, value = str(text).partition("=")
        kind, _, model = key.strip().partition(":")
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not sep or kind not in ("reject", "fnmr") or not math.isfinite(v) or not 0 < v < 1 \
                or (model and kind != "fnmr"):
            raise ScaleError(f"gate target {text!r}: give reject=R (the share of undegraded captures the gate may "
                             "reject, e.g. reject=0.15) or fnmr=F (the FNMR needed among kept pairs at FMR 1e-3, "
                             "e.g. fnmr=0.05; fnmr:dlib=F or fnmr:mobilefacenet=F for one FR model), 0 < R, F < 1")
        return cls(kind, v, model or None)

    def __str__(self) -> str:
        return f"{self.kind}{':' + self.fr_model if self.fr_model else ''}={self.value:g}"


def _fnmr_curve(gate: dict, fr_model: str | None) -> list[float | None]:
    curves = gate["fnmr_kept"]
    if fr_model is not None:
        if fr_model not in curves:
            raise ScaleError(f"the scale has no FNMR curve for FR model {fr_model!r}; it has {sorted(curves)}")
        return curves[fr_model]
    return [None if any(c[i] is None for c in curves.values()) else float(np.mean([c[i] for c in curves.values()]))
            for i in range(len(gate["thresholds"]))]


def thresholds_for_target(scale: dict, target: GateTarget) -> tuple[dict, dict]:
    """(gate thresholds, what they are expected to give) for ``target`` from a scale record's gate curves.

    reject=R: the highest utility threshold at which the gate (score checks and default measure checks) rejects at
    most R of the clean faces. fnmr=F: the lowest whose FNMR among kept pairs is at most F. The perceptual threshold
    is the curves' own."""
    gate = scale["gate"]
    grid = gate["thresholds"]
    if target.kind == "reject":
        ok = [i for i, r in enumerate(gate["reject_clean_gate"]) if r <= target.value + 1e-12]
        if not ok:
            raise ScaleError(f"gate target {target}: the gate's other checks (perceptual, size, pose, exposure, "
                             f"sharpness) alone reject {gate['reject_clean_gate'][0]:.1%} of clean faces; ask for at "
                             "least that")
        i = ok[-1]
    else:
        curve = _fnmr_curve(gate, target.fr_model)
        ok = [i for i, f in enumerate(curve) if f is not None and f <= target.value + 1e-12]
        if not ok:
            known = [(f, grid[i]) for i, f in enumerate(curve) if f is not None]
            best = min(known) if known else (float("nan"), None)
            raise ScaleError(f"gate target {target}: no utility threshold reaches it on the fit's pairs (the lowest "
                             f"FNMR among kept pairs is {best[0]:.4f}, at utility {best[1]}); ask for more")
        i = ok[0]
    u, p = float(grid[i]), float(gate["perceptual_accept"])
    thresholds = {"utility_accept": u, "utility_release": max(0.0, u - RELEASE_GAP),
                  "perceptual_accept": round(p, 1), "perceptual_release": round(max(0.0, p - RELEASE_GAP), 1)}
    expected = {"target": str(target), "utility_accept": u, "reject_clean": gate["reject_clean"][i],
                "reject_clean_gate": gate["reject_clean_gate"][i], "reject_all": gate["reject_all"][i],
                "pairs_kept": gate["pairs_kept"][i], "fnmr_kept": {m: c[i] for m, c in gate["fnmr_kept"].items()},
                "fnmr_all": gate["fnmr_all"]}
    return thresholds, expected


def gate_table(scale: dict, step: int = 5, extra: tuple[float, ...] = ()) -> list[dict]:
    """Rows of the report's threshold table: every ``step`` of the grid (and the thresholds in ``extra``)."""
    gate = scale["gate"]
    grid = gate["thresholds"]
    wanted = sorted({g for g in grid if g % step == 0} | {g for g in grid if any(abs(g - e) < 1e-9 for e in extra)})
    rows = []
    for g in wanted:
        i = grid.index(g)
        rows.append({"utility_accept": g, "reject_clean": gate["reject_clean"][i],
                     "reject_clean_gate": gate["reject_clean_gate"][i], "reject_all": gate["reject_all"][i],
                     "pairs_kept": gate["pairs_kept"][i],
                     "fnmr_kept": {m: c[i] for m, c in gate["fnmr_kept"].items()}})
    return rows


# ------------------------------------------------------------------------------------------------- manifest
MANIFEST_KEYS = ("kind", "meaning", "x", "y", "fr_models", "fmr", "per_fr_model", "fitted_on")


def manifest_scale(scale: dict) -> dict:
    """The part of a scale record a manifest carries (``fiqa_sdk.bundle.ScaleSpec``): the maps and what they mean;
    the reliability and gate curves go to the report."""
    return {k: scale[k] for k in MANIFEST_KEYS if k in scale}


def scale_problem(scale: object, student_info: dict, mirror_average: bool) -> str | None:
    """Why a student's recorded scale cannot be shipped with it (None when it can)."""
    if not isinstance(scale, dict):
        return "its scale record is not a JSON object"
    from fiqa_sdk.bundle import BundleError, ScaleSpec

    try:
        ScaleSpec.from_dict(manifest_scale(scale), "student.json scale")
    except BundleError as e:
        return str(e)
    fitted = scale.get("fitted_on", {})
    if fitted.get("student_sha256") != student_info.get("sha256"):
        return (f"it was fitted for student weights {str(fitted.get('student_sha256'))[:12]}..., not these "
                f"({str(student_info.get('sha256'))[:12]}...); fit it again: python -m fiqa_compile.scale")
    if bool(fitted.get("mirror_average")) != bool(mirror_average):
        how = "the mirror mean" if fitted.get("mirror_average") else "one pass"
        return (f"it was fitted on {how} of the student, and this bundle scores "
                f"{'the mirror mean' if mirror_average else 'one pass'}")
    if "gate" not in scale:
        return "it has no gate curves"
    return None


def uncalibrated_meaning(name: str, student_info: dict, reference: dict | None = None) -> dict:
    """The scale section of a score without a calibrated map: the percentile scale, said in words (and, given a
    fit's ``perceptual_reference``, where undegraded and degraded faces of training-side people land on it)."""
    data = student_info.get("data")
    if isinstance(data, list):
        data = ", ".join(map(str, data))
    source = str(data or "the student's training data")[:300]
    if name == "perceptual" and isinstance(student_info.get("perceptual_from"), str):
        what = student_info["perceptual_from"]
    elif isinstance(student_info.get(f"{name}_target"), str):
        what = f"the student's {name} target"
    else:
        what = "the utility teacher's score" if name == "utility" else "the perceptual teacher's pseudo-MOS"
    meaning = (f"uncalibrated: a percentile scale, not a probability. 0 and 100 are the 1st and 99th percentiles of "
               f"{what} on {source} (the faces the student learnt from), linear between: 50 is the middle of that "
               "range (not its median), and a score says where a face ranks among those faces, not how often it is "
               "recognised; choose thresholds on your own captures")
    scale = {"kind": "percentile", "meaning": meaning, "fitted_on": {"data": source}}
    if isinstance(reference, dict) and {"clean", "degraded"} <= set(reference):
        c, d = reference["clean"], reference["degraded"]
        scale["meaning"] += (f". On {reference.get('faces', '?')} faces of {reference.get('people', '?')} "
                             "training-side people (degraded in the frame, detected as the device does), undegraded "
                             f"photos score {c['p05']:.0f} / {c['p50']:.0f} / {c['p95']:.0f} (5th / 50th / 95th "
                             f"percentile) and degraded ones {d['p05']:.0f} / {d['p50']:.0f} / {d['p95']:.0f}")
        scale["fitted_on"]["reference"] = {k: reference[k] for k in ("faces", "people", "clean", "degraded")}
    return scale


# ------------------------------------------------------------------------------------------------- the fit
def percentile_0_100(z: np.ndarray, spec: dict) -> np.ndarray:
    t = np.asarray(z, dtype=np.float64) * spec["std"] + spec["mean"]
    return np.clip(100.0 * (t - spec["teacher_p01"]) / max(spec["teacher_p99"] - spec["teacher_p01"], 1e-9), 0, 100)


def fit_people(data: dict[str, np.ndarray], student_info: dict,
               split: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(rows to fit the maps on, rows to check them on or None, a description), detected rows of the frame set.

    The check rows are the people of the student's own held-out share (``student.json`` ``config.held_out``, the
    exact draw of ``train.recognition_student``): training-side people it never learnt from, on whom the reliability
    diagrams and gate curves are measured as an unseen person's face will score. ``all`` fits the maps on every
    person (the held-out ones' reliability from maps fitted without them); ``student-held-out`` fits on those
    people alone (reliability out of fold). A student without a held-out share: every person, out of fold."""
    from fiqa_compile.labels.recognition import clean_rows

    det = data["detected"].astype(bool)
    cfg = student_info.get("config", {})
    held_rows = None
    if "held_out" in cfg:
        from fiqa_calibration import held_out_people

        clean = clean_rows(data)
        found = det & np.array([int(p) in clean for p in data["photo"]])
        held = held_out_people(data["identity"][found], cfg["held_out"], cfg.get("seed", 0))
        held_rows = np.flatnonzero(det & np.isin(data["identity"], list(held)))
    share = (f"the {cfg.get('held_out', 0):.0%} of its people that the student held out of its training (seed "
             f"{cfg.get('seed', 0)})")
    if split == "student-held-out":
        if held_rows is None:
            raise ScaleError("this student records no held-out share of people (student.json config.held_out); "
                             "fit on --people all")
        return held_rows, held_rows, f"{share} alone; reliability out of fold"
    if held_rows is None:
        return np.flatnonzero(det), None, "every person of the frame set; reliability out of fold"
    return np.flatnonzero(det), held_rows, (f"every person of the frame set; reliability and gate curves on {share}, "
                                            "whom it never learnt from")


def check_training_side(identities: np.ndarray, faces: Path | None) -> str:
    """Refuse a frame set holding any of the project's held-out people (the benchmarks' people)."""
    from fiqa_calibration import FaceFolder, held_out_people
    from fiqa_calibration.datasets import find_lfw_dev

    folder = faces if faces is not None else find_lfw_dev()
    if folder is None or not Path(folder).is_dir():
        return "not checked against the held-out people (no lfw-dev folder found)"
    held = held_out_people(ident for _, ident in FaceFolder(folder))
    overlap = sorted(set(np.unique(identities).tolist()) & held)
    if overlap:
        raise ScaleError(f"the frame set holds {len(overlap)} of the project's held-out people (e.g. {overlap[:3]}), "
                         "whom the benchmarks measure on; fit on a frame set of training-side people "
                         "(labels.frame_set --split train)")
    return f"none of the {len(held)} held-out people of {folder}"


def held_out_check(raw: np.ndarray, outcomes: Outcomes, check_people: np.ndarray) -> dict:
    """Reliability diagrams of ``check_people``'s faces predicted by the maps fitted on everyone else's."""
    test = np.isin(outcomes.identity, check_people)
    if test.sum() < 50 or (~test).sum() < 200:
        raise ScaleError(f"{int(test.sum())} faces to check on and {int((~test).sum())} to fit on are too few")
    maps = fit_maps(raw[~test], outcomes.subset(~test))
    avg = np.interp(raw[test], *maps[None]) / 100
    sub = outcomes.subset(test)
    out = {"how": (f"on {len(np.unique(sub.identity))} people the student never learnt from ({int(test.sum())} "
                   f"faces), predicted by the maps fitted on the other {len(np.unique(outcomes.identity[~test]))}"),
           "average": {"scale": reliability(avg, sub.mean_success)}}
    for k, fr in enumerate(outcomes.fr_models):
        own = np.interp(raw[test], *maps[fr]) / 100
        out[fr] = {"scale": reliability(avg, sub.success[:, k]), "own": reliability(own, sub.success[:, k])}
    return out


def fit_scale(data: dict[str, np.ndarray], rows: np.ndarray, z: np.ndarray, student_info: dict, *, seed: int = 0,
              fmr: float = FMR, record: dict | None = None, check_rows: np.ndarray | None = None) -> dict:
    """The scale record for ``student.json``: maps, meaning, reliability, gate curves, perceptual reference.

    ``rows``: detected frame-set rows of the fitting people; ``z``: the student's raw outputs on them ([N, 2]:
    utility, perceptual, as the bundle will compute them). ``check_rows`` (a subset of ``rows``, e.g. people the
    student never learnt from): the reliability is measured on their people with maps fitted on the others, and
    the gate curves and perceptual reference on their faces; None or all of ``rows``: reliability out of fold, the
    curves on every face."""
    rows = np.asarray(rows)
    at = {int(r): i for i, r in enumerate(rows)}
    outcomes = face_outcomes(data, rows, FR_MODELS, fmr, seed)
    people = len(np.unique(outcomes.identity))
    if people < 2 * FOLDS or len(outcomes.rows) < 200:
        raise ScaleError(f"{len(outcomes.rows)} probe faces of {people} people (with two clean photos) are too few "
                         f"for a scale: need at least 200 faces of {2 * FOLDS} people")
    raw = z[[at[int(r)] for r in outcomes.rows], 0].astype(np.float64)
    maps = fit_maps(raw, outcomes)
    rel = None
    if check_rows is not None and len(np.setdiff1d(rows, check_rows)) > 0:
        try:
            rel = held_out_check(raw, outcomes, np.unique(data["identity"][check_rows]))
            curve_rows = np.asarray(check_rows)
        except ScaleError as e:  # too few of them to check on: out of fold over everyone instead
            print(f"scale: the check people are too few ({e}); reliability out of fold instead", file=sys.stderr)
    if rel is None:
        rel = out_of_fold(raw, outcomes, FOLDS, seed)
        curve_rows = rows
    x, y = maps[None]
    spec_p = next(s for s in student_info["scores"] if s["name"] == "perceptual")
    zc = z[[at[int(r)] for r in curve_rows]]
    utility = np.interp(zc[:, 0].astype(np.float64), x, y)
    perceptual = percentile_0_100(zc[:, 1], spec_p)
    gate = gate_curves(data, curve_rows, utility, perceptual, outcomes.thresholds, seed)
    gate["people"] = int(len(np.unique(data["identity"][curve_rows])))
    clean = data["version"][curve_rows] == 0
    q = (5, 25, 50, 75, 95)
    ref = {"faces": int(len(curve_rows)), "people": gate["people"],
           "clean": {f"p{k:02d}": round(float(np.percentile(perceptual[clean], k)), 2) for k in q},
           "degraded": {f"p{k:02d}": round(float(np.percentile(perceptual[~clean], k)), 2) for k in q}}
    comparisons = int(outcomes.references.sum())
    fitted_on = {"version": SCALE_VERSION, **(record or {}), "student_sha256": student_info.get("sha256"),
                 "mirror_average": bool(student_info.get("config", {}).get("mirror_average", False)),
                 "people": people, "photos": int(len(np.unique(outcomes.photo))), "faces": int(len(outcomes.rows)),
                 "clean_faces": int(np.sum(outcomes.version == 0)), "comparisons": comparisons,
                 "impostor_comparisons": outcomes.impostors,
                 "thresholds": {k: round(v, 5) for k, v in outcomes.thresholds.items()},
                 "observed_success": {fr: round(float(outcomes.success[:, k].mean()), 4)
                                      for k, fr in enumerate(FR_MODELS)},
                 "protocol": (f"probe = any detected face of a person with >= 2 clean photos (at most "
                              f"{MAX_PHOTOS_PER_PERSON} photos a person); each vs the person's other clean photos (at "
                              f"most {MAX_REFERENCES}); threshold at FMR {fmr:g} over probe-vs-clean impostor "
                              "comparisons; isotonic regression, one weight per face")}
    meaning = UTILITY_MEANING.format(fmr=fmr, models=" and ".join(("dlib's ResNet", "MobileFaceNet")),
                                     faces=len(outcomes.rows), photos=fitted_on["photos"], people=people,
                                     comparisons=comparisons)
    return {"kind": "isotonic", "meaning": meaning, "x": _r(x), "y": _r(y, 3), "fr_models": list(FR_MODELS),
            "fmr": fmr, "per_fr_model": {fr: {"x": _r(maps[fr][0]), "y": _r(maps[fr][1], 3)} for fr in FR_MODELS},
            "fitted_on": fitted_on, "reliability": _rounded(rel), "gate": gate, "perceptual_reference": ref}


def _r(a: np.ndarray, digits: int = 5) -> list[float]:
    """Knots as JSON numbers, rounded; rounding never breaks the order (x strictly up, y never down)."""
    out = [round(float(v), digits) for v in a]
    for i in range(1, len(out)):
        if digits and out[i] <= out[i - 1] and a[i] > a[i - 1]:
            out[i] = out[i - 1] + 10 ** -digits
    return out


def student_scores(student_dir: Path, crops: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, dict]:
    """The student's raw outputs on ``crops`` (fp32 torch, one pass or the mirror mean as it learnt) and its record."""
    import torch

    from fiqa_compile.distill import _predict
    from fiqa_compile.student_store import load_student

    if threads:
        torch.set_num_threads(threads)
    model, info = load_student(student_dir)
    mirror = bool(info.get("config", {}).get("mirror_average", False))
    return _predict(model, crops, batch=256, mirror_average=mirror), info


def main(argv: list[str] | None = None) -> int:
    from fiqa_compile.cli_args import plain, positive_int
    from fiqa_compile.student_store import EMBEDDED_STUDENT

    ap = argparse.ArgumentParser(prog="python -m fiqa_compile.scale", description=plain(__doc__.split("\n\n")[0]),
                                 epilog=plain(__doc__.split("\n\n", 1)[1]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=Path, action="append", required=True,
                    help="frame set of training-side people (labels.frame_set --split train); repeat for sets of "
                         "other --seeds")
    ap.add_argument("--student", type=Path, default=EMBEDDED_STUDENT,
                    help="student folder whose student.json gets the scale (default: the embedded student)")
    ap.add_argument("--people", choices=SPLITS, default="all",
                    help="all (default): fit the maps on every person of the set, and measure their reliability and "
                         "the gate curves on the training-side people the student held out of its training; "
                         "student-held-out: fit on those people alone")
    ap.add_argument("--faces", type=Path, default=None,
                    help="the photos' folder, to check no held-out person is in the set (default: lfw-dev if found)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the scale record here as JSON instead of into the student's student.json")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subsets, impostors, pairs and folds (default 0)")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    from fiqa_compile.labels.frame_set import load_sets

    t0 = time.time()
    try:
        data = load_sets(args.frames)
        checked = check_training_side(data["identity"], args.faces)
        info = json.loads((args.student / "student.json").read_text())
        rows, check_rows, who = fit_people(data, info, args.people)
        print(f"{len(rows)} detected faces of {len(np.unique(data['identity'][rows]))} people ({who}); scoring them",
              file=sys.stderr, flush=True)
        z, info = student_scores(args.student, data["crop"][rows], args.threads)
        stamps = [json.loads((f / "settings.json").read_text()) for f in args.frames]
        record = {"frames": [str(f) for f in args.frames],
                  "sets": [{k: s.get(k) for k in ("protocol", "versions", "seed", "photos", "photos_sha256")}
                           for s in stamps],
                  "complete": all((f / "failures.txt").exists() for f in args.frames),
                  "people_rule": who, "held_out_check": checked}
        scale = fit_scale(data, rows, z, info, seed=args.seed, record=record, check_rows=check_rows)
    except (ScaleError, OSError, ValueError, KeyError) as e:
        print(f"scale: {e}", file=sys.stderr)
        return 2
    scale["command"] = "python -m fiqa_compile.scale " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out is not None:
        args.out.write_text(json.dumps(scale, indent=2, allow_nan=False) + "\n")
    else:
        path = args.student / "student.json"
        info = json.loads(path.read_text())  # as on disk: every other field kept as it is
        info["scale"] = scale
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info, indent=2, allow_nan=False) + "\n")
        tmp.replace(path)
    rel = scale["reliability"]
    print(f"scale fitted in {time.time() - t0:.0f} s on {scale['fitted_on']['faces']} faces of "
          f"{scale['fitted_on']['people']} people, {len(scale['x'])} knots; mean |predicted - observed| on people the fit left out "
          "over 10 bins: " + ", ".join(f"{fr} {rel[fr]['scale']['mean_abs_error']:.3f} (own map "
                                       f"{rel[fr]['own']['mean_abs_error']:.3f})" for fr in FR_MODELS)
          + f", average {rel['average']['scale']['mean_abs_error']:.3f}")
    print(f"written to {args.out or args.student / 'student.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
