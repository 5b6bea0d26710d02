"""Report figures: EDC curves, student-vs-teacher scatter, score histograms. Each writes a PNG and returns its path.

matplotlib is imported inside the functions and drawn through its Agg canvas directly (no pyplot), so
importing this module costs nothing, never needs a display, and never changes a caller's pyplot backend.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fiqa_compile.eval.edc import EDC
from fiqa_compile.eval.metrics import fit_logistic, plcc, srcc, validate_scores


def _figure(width: float = 6.4, height: float = 4.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; give a path ending in .png, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _step_xy(discard: np.ndarray, errors: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Points for a post-step plot that stops at ``limit`` (the curve's last step is carried to it)."""
    keep = discard <= limit
    return np.append(discard[keep], limit), np.append(errors[keep], errors[keep][-1])


def plot_edc(curves: Mapping[str, EDC], path: str | Path, limit: float = 0.3, title: str | None = None,
             log_y: bool = False) -> Path:
    """EDC curves of several quality measures on one comparison set, best curve dashed, pAUC in the legend.

    The methods must share the comparisons and the threshold (otherwise their curves are not comparable);
    the theoretical best curve is then the same for all and is drawn once.
    """
    if not curves:
        raise ValueError("plot_edc needs at least one EDC curve")
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"limit must be in (0, 1], got {limit}")
    first = next(iter(curves.values()))
    for name, c in curves.items():
        if (c.n_comparisons, c.n_errors, c.threshold, c.error_type) != (
                first.n_comparisons, first.n_errors, first.threshold, first.error_type):
            raise ValueError(f"curve {name!r} was computed on other comparisons or another threshold than the "
                             "first; compute all methods' EDCs on the same scores with the same fixed threshold")
    fig = _figure()
    ax = fig.add_subplot()
    for name, c in curves.items():
        x, y = _step_xy(c.discard_fractions, c.errors, limit)
        ax.step(x, y, where="post", linewidth=1.6, label=f"{name} (pAUC {c.pauc_at(limit):.3g})")
    bx, by = _step_xy(first.best_discard_fractions, first.best_errors, limit)
    ax.step(bx, by, where="post", linestyle="--", color="black", linewidth=1.0,
            label=f"theoretical best (pAUC {first.pauc_best_at(limit):.3g})")
    ax.set_xlim(0.0, limit)
    if log_y:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0.0)
    err = first.error_type.upper()
    fmr = f", FMR {first.fmr_at_threshold:.0e}" if first.fmr_at_threshold is not None else ""
    kind = "genuine" if first.error_type == "fnmr" else "impostor"
    ax.set_xlabel(f"fraction of {kind} comparisons discarded (lowest pair quality first)")
    ax.set_ylabel(err)
    ax.set_title(title or f"EDC ({err}, threshold {first.threshold:.4g}{fmr}, n={first.n_comparisons})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_scatter(pred: object, target: object, path: str | Path, xlabel: str = "student",
                 ylabel: str = "teacher", title: str | None = None) -> Path:
    """Student-vs-teacher scatter with the y = x line, the fitted logistic, and SRCC/PLCC in the title."""
    p, t = validate_scores(pred, target)
    fig = _figure(5.6, 5.2)
    ax = fig.add_subplot()
    alpha = float(np.clip(2000.0 / len(p), 0.05, 0.8))
    ax.scatter(p, t, s=6, alpha=alpha, linewidths=0)
    lo, hi = float(min(p.min(), t.min())), float(max(p.max(), t.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle=":", label="y = x")
    rho, r = srcc(p, t), plcc(p, t)
    if np.ptp(p) > 0 and np.ptp(t) > 0:
        grid = np.linspace(p.min(), p.max(), 200)
        ax.plot(grid, fit_logistic(p, t, 5)(grid), color="C3", linewidth=1.2, label="logistic fit")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}SRCC {rho:.4f}   PLCC {r:.4f}   n={len(p)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, path)


def plot_histograms(scores: Mapping[str, object], path: str | Path, bins: int = 50, xlabel: str = "quality score",
                    title: str | None = None) -> Path:
    """Overlaid score histograms (e.g. quality per dataset, or genuine vs impostor similarities) on shared bins."""
    if not scores:
        raise ValueError("plot_histograms needs at least one named score array")
    arrays = {}
    for name, values in scores.items():
        a = np.asarray(values, dtype=np.float64).ravel()
        if a.size == 0 or not np.all(np.isfinite(a)):
            raise ValueError(f"scores {name!r} are empty or hold NaN/inf; drop those values first")
        arrays[name] = a
    lo = min(a.min() for a in arrays.values())
    hi = max(a.max() for a in arrays.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, a) in enumerate(arrays.items()):
        color = f"C{i % 10}"
        ax.hist(a, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color=color,
                label=f"{name} (n={a.size})")
        ax.hist(a, bins=edges, density=True, histtype="step", linewidth=1.0, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_reliability(diagrams: Mapping[str, Mapping], path: str | Path, title: str | None = None) -> Path:
    """Reliability diagrams (``fiqa_compile.scale.reliability`` results: bins of predicted vs observed with counts),
    one line per name over the y = x line of a perfect calibration, the bins' counts in a panel below."""
    if not diagrams:
        raise ValueError("plot_reliability needs at least one reliability diagram")
    fig = _figure(6.4, 6.0)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax, counts = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="perfectly calibrated")
    width = 0.1 / (len(diagrams) + 1)
    for i, (name, d) in enumerate(diagrams.items()):
        full = [b for b in d["bins"] if b["n"]]
        pred = [b["predicted"] for b in full]
        obs = [b["observed"] for b in full]
        err = d.get("mean_abs_error")
        label = f"{name}" + (f" (mean |p - o| {err:.3f})" if err is not None else "")
        ax.plot(pred, obs, marker="o", markersize=4, linewidth=1.2, color=f"C{i % 10}", label=label)
        counts.bar([b["lo"] + width * (i + 0.5) for b in d["bins"]], [b["n"] for b in d["bins"]], width=width,
                   align="edge", color=f"C{i % 10}", alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted (utility / 100)")
    ax.set_ylabel("observed success rate")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    counts.set_xlim(0, 1)
    counts.set_xlabel("predicted (bins of 0.1)")
    counts.set_ylabel("faces")
    counts.grid(True, alpha=0.3)
    return _save(fig, path)
