"""Agreement between predicted and reference quality scores, as reported in IQA / FIQA papers.

SRCC and KRCC measure monotonic agreement (what a quality *ranking* needs). PLCC after a monotonic logistic
mapping (VQEG FR-TV Phase II, 2003; Sheikh et al. 2006) measures prediction accuracy without penalising a
nonlinear but monotonic scale difference. Plain PLCC, MAE and RMSE matter when the scales should agree, as
for a distilled student against its teacher.

Undefined is reported as undefined: a constant input has no ranking, so its correlations are NaN (not 0,
and without scipy's warnings); callers such as reports check :func:`math.isnan`. After a logistic fit
the PLCC is positive for a decreasing relationship too, as IQA papers report it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

MIN_SAMPLES = 3


def validate_scores(pred: object, target: object) -> tuple[np.ndarray, np.ndarray]:
    """Both as 1-D float64 arrays of equal length >= 3 without NaN/inf, or a ValueError that says which rule broke."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.ndim != 1 or t.ndim != 1:
        raise ValueError(f"pred and target must be 1-D score vectors, got shapes {p.shape} and {t.shape}; "
                         "flatten them (one score per image)")
    if len(p) != len(t):
        raise ValueError(f"pred and target differ in length ({len(p)} vs {len(t)}); pass one pred per target")
    if len(p) < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} samples for a correlation, got {len(p)}")
    for name, a in (("pred", p), ("target", t)):
        if not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise ValueError(f"{name} holds {bad} NaN/inf value(s); drop or impute those samples first")
    return p, t


def _constant(a: np.ndarray) -> bool:
    return bool(np.ptp(a) == 0.0)


def srcc(pred: object, target: object) -> float:
    """Spearman rank correlation; ties get average ranks. NaN when either input is constant."""
    p, t = validate_scores(pred, target)
    if _constant(p) or _constant(t):
        return math.nan
    return float(stats.spearmanr(p, t).statistic)


def krcc(pred: object, target: object) -> float:
    """Kendall's tau-b, which corrects for ties in either input. NaN when either input is constant."""
    p, t = validate_scores(pred, target)
    if _constant(p) or _constant(t):
        return math.nan
    return float(stats.kendalltau(p, t, variant="b").statistic)


def _pearson(p: np.ndarray, t: np.ndarray) -> float:
    if _constant(p) or _constant(t):
        return math.nan
    pc, tc = p - p.mean(), t - t.mean()
    r = float(pc @ tc / math.sqrt(float(pc @ pc) * float(tc @ tc)))
    return max(-1.0, min(1.0, r))


def _logistic4(z: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    # VQEG FR-TV Phase II: (b1 - b2) / (1 + exp(-(z - b3) / b4)) + b2, with b4 > 0 so it is monotonic.
    return (b1 - b2) * _sigmoid((z - b3) / b4) + b2


def _logistic5(z: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    # Sheikh et al. 2006: b1 (1/2 - 1/(1 + exp(b2 (z - b3)))) + b4 z + b5; monotonic under the fit's sign bounds.
    return b1 * (_sigmoid(b2 * (z - b3)) - 0.5) + b4 * z + b5


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


@dataclass(frozen=True)
class LogisticFit:
    """A fitted monotonic logistic mapping from predicted scores onto the target scale.

    Fitted on standardised predictions ``(x - x_mean) / x_std`` so that the optimiser sees unit-scale inputs
    whatever the score range is.
    """

    params: tuple[float, ...]
    n_params: int
    x_mean: float
    x_std: float

    def __call__(self, x: object) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_std
        f = _logistic5 if self.n_params == 5 else _logistic4
        return f(z, *self.params)


def fit_logistic(pred: object, target: object, n_params: int = 5) -> LogisticFit:
    """Least-squares fit of the 4- or 5-parameter monotonic logistic from ``pred`` onto ``target``.

    Monotonicity is enforced by parameter bounds in the direction of the Spearman correlation, so the mapping
    never reorders predictions (SRCC/KRCC are unchanged by it). Raises ValueError for a constant ``pred``
    (nothing to map) and RuntimeError when the optimiser does not converge.
    """
    if n_params not in (4, 5):
        raise ValueError(f"n_params must be 4 (VQEG) or 5 (Sheikh et al. 2006), got {n_params}")
    p, t = validate_scores(pred, target)
    if _constant(p):
        raise ValueError("pred is constant; a logistic mapping needs at least two distinct predicted values")
    x_mean, x_std = float(p.mean()), float(p.std())
    z = (p - x_mean) / x_std
    rho = srcc(p, t)
    sign = -1.0 if (not math.isnan(rho) and rho < 0) else 1.0
    t_lo, t_hi, t_mean = float(t.min()), float(t.max()), float(t.mean())
    span = max(t_hi - t_lo, 1e-12)
    inf = np.inf
    if n_params == 4:
        starts = [[t_hi, t_lo, 0.0, 1.0] if sign > 0 else [t_lo, t_hi, 0.0, 1.0]]
        lower = [-inf, -inf, -inf, 1e-6]
        upper = [inf, inf, inf, inf]
        model = _logistic4
    else:
        slope = sign * float(np.std(t)) * 0.1
        # One sigmoid-shaped start and one nearly linear start: the fit keeps whichever ends lower.
        starts = [[sign * span, 1.0, float(np.median(z)), slope, t_mean],
                  [sign * 1e-3, 1.0, 0.0, sign * float(np.std(t)), t_mean]]
        if sign > 0:
            lower, upper = [0.0, 0.0, -inf, 0.0, -inf], [inf, inf, inf, inf, inf]
        else:
            lower, upper = [-inf, 0.0, -inf, -inf, -inf], [0.0, inf, inf, 0.0, inf]
        model = _logistic5
    best, best_sse, last_error = None, math.inf, None
    for p0 in starts:
        p0 = np.clip(p0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                params, _ = optimize.curve_fit(model, z, t, p0=p0, bounds=(lower, upper), maxfev=20000)
        except (RuntimeError, ValueError) as exc:
            last_error = exc
            continue
        sse = float(np.sum((model(z, *params) - t) ** 2))
        if sse < best_sse:
            best, best_sse = params, sse
    if best is None:
        raise RuntimeError(f"the {n_params}-parameter logistic fit did not converge ({last_error}); "
                           "try n_params=4 or report the rank correlations only")
    return LogisticFit(params=tuple(float(v) for v in best), n_params=n_params, x_mean=x_mean, x_std=x_std)


def plcc(pred: object, target: object, fit: int | None = None) -> float:
    """Pearson correlation; with ``fit`` = 4 or 5, after mapping ``pred`` through the fitted logistic first."""
    p, t = validate_scores(pred, target)
    if fit is None:
        return _pearson(p, t)
    if _constant(p) or _constant(t):
        return math.nan
    return _pearson(fit_logistic(p, t, fit)(p), t)


def mae(pred: object, target: object, fit: int | None = None) -> float:
    """Mean absolute error, on the raw scale or (``fit`` = 4/5) after the logistic mapping."""
    p, t = validate_scores(pred, target)
    if fit is not None:
        p = fit_logistic(p, t, fit)(p)
    return float(np.mean(np.abs(p - t)))


def rmse(pred: object, target: object, fit: int | None = None) -> float:
    """Root mean squared error, on the raw scale or (``fit`` = 4/5) after the logistic mapping."""
    p, t = validate_scores(pred, target)
    if fit is not None:
        p = fit_logistic(p, t, fit)(p)
    return float(math.sqrt(np.mean((p - t) ** 2)))


def correlation_report(pred: object, target: object) -> dict[str, float | int | str | bool]:
    """Every agreement number a report table needs, from one validated pair of score vectors.

    The logistic mapping is the 5-parameter one; if it fails to converge the 4-parameter one is used and
    ``logistic`` says which (``"none"`` when ``pred`` or ``target`` is constant, with fitted values NaN).
    """
    p, t = validate_scores(pred, target)
    out: dict[str, float | int | str | bool] = {
        "n": int(len(p)),
        "srcc": srcc(p, t),
        "krcc": krcc(p, t),
        "plcc": _pearson(p, t),
        "mae": float(np.mean(np.abs(p - t))),
        "rmse": float(math.sqrt(np.mean((p - t) ** 2))),
        "pred_constant": _constant(p),
        "target_constant": _constant(t),
    }
    if _constant(p) or _constant(t):
        out.update(logistic="none", plcc_fit=math.nan, mae_fit=math.nan, rmse_fit=math.nan)
        return out
    try:
        mapping = fit_logistic(p, t, 5)
    except RuntimeError:
        mapping = fit_logistic(p, t, 4)
    mapped = mapping(p)
    out.update(logistic=str(mapping.n_params), plcc_fit=_pearson(mapped, t),
               mae_fit=float(np.mean(np.abs(mapped - t))), rmse_fit=float(math.sqrt(np.mean((mapped - t) ** 2))))
    return out
