"""How closely a converted model tracks the fp32 torch student: rank agreement (what a quality gate uses)
and absolute error, per output."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from fiqa_compile.models.students import OUTPUT_NAMES


class FidelityError(RuntimeError):
    """A converted model does not track the float model closely enough to ship."""


@dataclass
class Fidelity:
    n: int
    max_abs_err: float
    mean_abs_err: float
    srcc: dict[str, float]  # Spearman rank correlation per output; NaN when either side is constant

    @property
    def min_srcc(self) -> float:
        vals = list(self.srcc.values())
        return float("nan") if any(np.isnan(v) for v in vals) else float(min(vals))

    def to_dict(self) -> dict:
        return {"n": self.n, "max_abs_err": self.max_abs_err, "mean_abs_err": self.mean_abs_err,
                "srcc": dict(self.srcc)}

    def require(self, min_srcc: float | None, what: str) -> None:
        """Raise :class:`FidelityError` when rank agreement is below ``min_srcc`` (None: no gate)."""
        if min_srcc is None:
            return
        if np.isnan(self.min_srcc):
            raise FidelityError(f"{what}: an output is constant on the {self.n} check inputs, so rank agreement is "
                                "undefined; check with varied real faces, and a trained (not random) student")
        if self.min_srcc < min_srcc:
            raise FidelityError(f"{what}: Spearman vs fp32 {self.srcc} < {min_srcc} on {self.n} inputs "
                                f"(max abs err {self.max_abs_err:.3g}); try another calibration method, a larger "
                                "calibration set, or keep the head in float")


def compare_scores(ref: np.ndarray, got: np.ndarray, names: tuple[str, ...] = OUTPUT_NAMES) -> Fidelity:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape or ref.ndim != 2 or ref.shape[1] != len(names):
        raise ValueError(f"expected two [N,{len(names)}] score arrays, got {ref.shape} and {got.shape}")
    srcc = {}
    for j, name in enumerate(names):
        if len(ref) < 3 or np.ptp(ref[:, j]) == 0 or np.ptp(got[:, j]) == 0:
            srcc[name] = float("nan")
        else:
            srcc[name] = float(spearmanr(ref[:, j], got[:, j])[0])
    err = np.abs(ref - got)
    return Fidelity(n=len(ref), max_abs_err=float(err.max()), mean_abs_err=float(err.mean()), srcc=srcc)
