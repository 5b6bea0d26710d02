"""Error-versus-Discard Characteristic (EDC) of a quality measure, ISO/IEC 29794-1:2024 style.

A face quality score is useful exactly when discarding low-quality captures removes recognition errors.
The EDC measures that (Grother & Tabassi 2007; Schlett et al. 2023, "Considerations on the evaluation of
biometric quality assessment algorithms"):

1. Each comparison (a pair of samples) gets a pair quality, by default the min of its two samples' qualities,
   so that discarding comparisons in pair-quality order is discarding *samples* in quality order.
2. The similarity threshold is fixed ONCE, before anything is discarded, at a target FMR over the impostor
   scores. Re-fixing it after discarding would hide the effect being measured.
3. Comparisons are discarded in ascending pair quality; comparisons with equal quality go together (a quality
   threshold cannot split them), so the curve is a step function with one step per distinct quality.
4. The error (FNMR over the kept genuine comparisons, the standard EDC; or FMR over the kept impostor
   comparisons) is plotted against the discarded fraction.
5. pAUC: the step-wise area under the curve up to a discard limit (0.2, 0.3). The theoretical best curve
   discards the erroneous comparisons first; its pAUC is the floor no quality measure can go under, so
   ``pauc - pauc_best`` is 0 for a perfect measure.

Scores are similarities (higher = more alike; negate distances); a genuine comparison matches when
``score >= threshold``. Qualities: higher = better. Everything is a sort plus cumulative sums: O(n log n).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

PairQualityFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
PAIR_QUALITY_FUNCTIONS: dict[str, PairQualityFn] = {
    "min": np.minimum,  # ISO/IEC 29794-1 and Schlett et al.: a pair is as good as its worse sample
    "mean": lambda a, b: (a + b) / 2.0,
}
ERROR_TYPES = ("fnmr", "fmr")
DEFAULT_LIMITS = (0.2, 0.3)


def _vector(values: object, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (one value per comparison), got shape {a.shape}")
    if len(a) == 0:
        raise ValueError(f"{name} is empty; an EDC needs comparisons")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds {int(np.count_nonzero(~np.isfinite(a)))} NaN/inf value(s); "
                         "drop those comparisons (e.g. failed detections) before computing the EDC")
    return a


def similarity_threshold(impostor_scores: object, fmr: float) -> float:
    """The lowest threshold whose FMR over ``impostor_scores`` does not exceed ``fmr``.

    Candidate thresholds are the observed impostor scores (any threshold between two of them gives the same
    FMR); ties may push the achieved FMR below the target. Raises ValueError when there are too few impostor
    scores to resolve ``fmr`` at all (fewer than 1/fmr), rather than silently reporting FMR = 0.
    """
    s = _vector(impostor_scores, "impostor_scores")
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    n = len(s)
    allowed = math.floor(fmr * n * (1.0 + 1e-12))  # guard 0.001 * 1000 = 0.9999999
    if allowed < 1:
        raise ValueError(f"fmr={fmr:g} needs at least {math.ceil(1.0 / fmr)} impostor scores to be measurable, "
                         f"got {n}; add impostor comparisons, raise fmr, or pass a threshold directly")
    # Partial sort, O(n): only the (allowed + 1) largest scores decide the threshold.
    kth = n - allowed - 1
    part = np.partition(s, kth)
    boundary = part[kth]  # the (allowed + 1)-th largest score: a threshold at or below it admits too many
    above = part[kth + 1:]
    above = above[above > boundary]  # every score above the boundary; at most `allowed` of them
    if above.size == 0:  # the top score alone is tied more than `allowed` times: admit no impostor at all
        return float(np.nextafter(boundary, np.inf))
    return float(above.min())


def pair_qualities(qualities: object, pair_quality: str | PairQualityFn = "min") -> np.ndarray:
    """Pairwise qualities: ``qualities`` is (n,) (already pairwise) or (n, 2) (the two samples' qualities)."""
    q = np.asarray(qualities, dtype=np.float64)
    if q.ndim == 2 and q.shape[1] == 2:
        if isinstance(pair_quality, str):
            if pair_quality not in PAIR_QUALITY_FUNCTIONS:
                raise ValueError(f"unknown pair_quality {pair_quality!r}; use one of "
                                 f"{sorted(PAIR_QUALITY_FUNCTIONS)} or a callable (q1, q2) -> q")
            fn = PAIR_QUALITY_FUNCTIONS[pair_quality]
        else:
            fn = pair_quality
        combined = np.asarray(fn(q[:, 0], q[:, 1]), dtype=np.float64)
        if combined.shape != (len(q),):
            raise ValueError(f"pair_quality returned shape {combined.shape}, expected ({len(q)},)")
        q = combined
    elif q.ndim != 1:
        raise ValueError(f"qualities must be (n,) pair qualities or (n, 2) sample qualities, got shape {q.shape}")
    return _vector(q, "qualities")


def step_pauc(discard_fractions: np.ndarray, errors: np.ndarray, limit: float) -> float:
    """Area under a step curve (each error holds until the next discard fraction) from 0 to ``limit``.

    Step-wise rather than trapezoidal integration, as Schlett et al. recommend: between two distinct quality
    thresholds nothing can be discarded, so the error really stays constant there.
    """
    if not 0.0 <= limit <= 1.0:
        raise ValueError(f"pAUC discard limit must be in [0, 1], got {limit}")
    d = np.asarray(discard_fractions, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    ends = np.minimum(np.append(d[1:], limit), limit)
    widths = np.clip(ends - d, 0.0, None)
    return float(np.sum(e * widths))


def best_curve(n_comparisons: int, n_errors: int) -> tuple[np.ndarray, np.ndarray]:
    """The theoretical best EDC: discarding the erroneous comparisons first, one at a time.

    After discarding m <= n_errors comparisons the error is (n_errors - m) / (n - m), the lowest any quality
    ordering can reach at that discard count. (The straight line ``start_error - d`` sometimes drawn instead
    ignores the shrinking denominator and lies slightly below this.)
    """
    m = np.arange(min(n_errors, n_comparisons - 1) + 1, dtype=np.float64)
    return m / n_comparisons, (n_errors - m) / (n_comparisons - m)


@dataclass(frozen=True)
class EDC:
    """One EDC curve: ``errors[i]`` holds from ``discard_fractions[i]`` to the next step.

    ``quality_thresholds[i]`` is the lowest pair quality still kept at step i. ``pauc``/``pauc_best`` map
    each discard limit to its step-wise area; :attr:`pauc_excess` is their difference (>= 0, 0 is perfect).
    """

    error_type: str
    discard_fractions: np.ndarray
    errors: np.ndarray
    quality_thresholds: np.ndarray
    discard_counts: np.ndarray
    n_comparisons: int
    n_errors: int
    threshold: float
    fmr_target: float | None
    fmr_at_threshold: float | None
    best_discard_fractions: np.ndarray
    best_errors: np.ndarray
    pauc: dict[float, float] = field(default_factory=dict)
    pauc_best: dict[float, float] = field(default_factory=dict)

    @property
    def start_error(self) -> float:
        """The error at 0% discard (FNMR or FMR at the fixed threshold)."""
        return float(self.errors[0])

    @property
    def pauc_excess(self) -> dict[float, float]:
        """pAUC minus the theoretical best pAUC per limit: the area a quality measure leaves on the table."""
        return {k: self.pauc[k] - self.pauc_best[k] for k in self.pauc}

    def error_at(self, discard_fraction: float) -> float:
        """The error in effect at ``discard_fraction`` (the step at or before it)."""
        if not 0.0 <= discard_fraction < 1.0:
            raise ValueError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
        i = int(np.searchsorted(self.discard_fractions, discard_fraction, side="right")) - 1
        return float(self.errors[i])

    def pauc_at(self, limit: float) -> float:
        return step_pauc(self.discard_fractions, self.errors, limit)

    def pauc_best_at(self, limit: float) -> float:
        return step_pauc(self.best_discard_fractions, self.best_errors, limit)

    def summary(self) -> dict[str, float | int | str | None]:
        """Scalars for a report row (arrays left out)."""
        out: dict[str, float | int | str | None] = {
            "error_type": self.error_type, "n_comparisons": self.n_comparisons, "n_errors": self.n_errors,
            "threshold": self.threshold, "fmr_target": self.fmr_target, "fmr_at_threshold": self.fmr_at_threshold,
            "start_error": self.start_error,
        }
        for limit in self.pauc:
            out[f"pauc@{limit:g}"] = self.pauc[limit]
            out[f"pauc_best@{limit:g}"] = self.pauc_best[limit]
            out[f"pauc_excess@{limit:g}"] = self.pauc_excess[limit]
        return out


def edc_curve(scores: object, qualities: object, threshold: float, *, error_type: str = "fnmr",
              pair_quality: str | PairQualityFn = "min", limits: Sequence[float] = DEFAULT_LIMITS,
              fmr_target: float | None = None, fmr_at_threshold: float | None = None) -> EDC:
    """The EDC of one comparison set at a given, already fixed ``threshold``.

    ``error_type="fnmr"``: ``scores`` are genuine comparisons, an error is ``score < threshold``.
    ``error_type="fmr"``: ``scores`` are impostor comparisons, an error is ``score >= threshold``.
    ``qualities``: (n,) pair qualities or (n, 2) sample qualities combined with ``pair_quality``.
    """
    if error_type not in ERROR_TYPES:
        raise ValueError(f"error_type must be one of {ERROR_TYPES}, got {error_type!r}")
    s = _vector(scores, "scores")
    q = pair_qualities(qualities, pair_quality)
    if len(s) != len(q):
        raise ValueError(f"scores and qualities differ in length ({len(s)} vs {len(q)}); one quality per comparison")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    n = len(s)
    order = np.argsort(q)  # order inside a tie group is irrelevant: the group is discarded as one
    q_sorted = q[order]
    is_error = (s[order] < threshold) if error_type == "fnmr" else (s[order] >= threshold)
    # errors_from[i]: errors among comparisons i..n-1, i.e. those kept after discarding the i lowest.
    errors_from = np.concatenate([np.cumsum(is_error[::-1])[::-1], [0]])
    starts = np.concatenate([[0], np.flatnonzero(q_sorted[1:] != q_sorted[:-1]) + 1])  # tie groups go together
    errors = errors_from[starts] / (n - starts)
    n_errors = int(errors_from[0])
    best_d, best_e = best_curve(n, n_errors)
    discard = starts / n
    return EDC(
        error_type=error_type, discard_fractions=discard, errors=errors, quality_thresholds=q_sorted[starts],
        discard_counts=starts, n_comparisons=n, n_errors=n_errors, threshold=float(threshold),
        fmr_target=fmr_target, fmr_at_threshold=fmr_at_threshold, best_discard_fractions=best_d,
        best_errors=best_e,
        pauc={float(lim): step_pauc(discard, errors, lim) for lim in limits},
        pauc_best={float(lim): step_pauc(best_d, best_e, lim) for lim in limits},
    )


def edc(genuine_scores: object | None, genuine_qualities: object | None, impostor_scores: object, *,
        fmr: float = 1e-3, impostor_qualities: object | None = None, error_type: str = "fnmr",
        pair_quality: str | PairQualityFn = "min", limits: Sequence[float] = DEFAULT_LIMITS) -> EDC:
    """The EDC with the threshold fixed at target ``fmr`` over all impostor scores (0% discard).

    ``error_type="fnmr"`` (the standard EDC) discards genuine comparisons and needs ``genuine_*``;
    ``"fmr"`` discards impostor comparisons and needs ``impostor_qualities``.
    """
    imp = _vector(impostor_scores, "impostor_scores")
    threshold = similarity_threshold(imp, fmr)
    achieved = float(np.mean(imp >= threshold))
    if error_type == "fnmr":
        if genuine_scores is None or genuine_qualities is None:
            raise ValueError("error_type='fnmr' needs genuine_scores and genuine_qualities")
        scores, qualities = genuine_scores, genuine_qualities
    elif error_type == "fmr":
        if impostor_qualities is None:
            raise ValueError("error_type='fmr' needs impostor_qualities (one per impostor comparison)")
        scores, qualities = imp, impostor_qualities
    else:
        raise ValueError(f"error_type must be one of {ERROR_TYPES}, got {error_type!r}")
    return edc_curve(scores, qualities, threshold, error_type=error_type, pair_quality=pair_quality,
                     limits=limits, fmr_target=fmr, fmr_at_threshold=achieved)
