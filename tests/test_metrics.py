"""SRCC / KRCC / PLCC (+ logistic fit), MAE, RMSE: hand-computed values, ties, degenerate and bad input."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fiqa_compile.eval import correlation_report, fit_logistic, krcc, mae, plcc, rmse, srcc


def test_hand_computed_with_ties() -> None:
    pred, target = [1, 2, 2, 3], [1, 2, 3, 4]
    # Average ranks: pred -> 1, 2.5, 2.5, 4; target -> 1, 2, 3, 4. Deviations from 2.5: (-1.5, 0, 0, 1.5) and
    # (-1.5, -0.5, 0.5, 1.5): covariance sum 4.5, squares 4.5 and 5 -> SRCC = 4.5 / sqrt(22.5).
    assert srcc(pred, target) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)
    # 6 pairs: 5 concordant, 0 discordant, 1 tied in pred only -> tau-b = 5 / sqrt((6 - 1) * (6 - 0)).
    assert krcc(pred, target) == pytest.approx(5 / math.sqrt(30), abs=1e-12)


def test_hand_computed_plcc_mae_rmse() -> None:
    pred, target = [1, 2, 3], [1, 2, 4]
    # Deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): cov sum 3, squares 2 and 42/9 -> r = 3 / sqrt(2 * 42 / 9).
    assert plcc(pred, target) == pytest.approx(3 / math.sqrt(2 * 42 / 9), abs=1e-12)
    assert mae(pred, target) == pytest.approx(1 / 3)
    assert rmse(pred, target) == pytest.approx(math.sqrt(1 / 3))
    assert srcc(pred, target) == pytest.approx(1.0)
    assert krcc([3, 2, 1], target) == pytest.approx(-1.0)


def test_agrees_with_reference_implementations() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=300).round(1)  # with ties
    y = x + rng.normal(size=300)
    assert plcc(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    # SRCC is the Pearson correlation of average ranks (computed here independently of scipy).
    def ranks(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(1, len(a) + 1)
        for v in np.unique(a):
            r[a == v] = r[a == v].mean()
        return r
    assert srcc(x, y) == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1], abs=1e-12)


def _logistic_data(n: int = 200, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, n)
    return x, 1.0 / (1.0 + np.exp(-(x - 5.0) * 1.5))  # saturating: far from linear


@pytest.mark.parametrize("n_params", [4, 5])
def test_logistic_fit_linearises_a_monotonic_relation(n_params: int) -> None:
    x, y = _logistic_data()
    assert plcc(x, y) < 0.97
    assert plcc(x, y, fit=n_params) > 0.9999
    assert rmse(x, y, fit=n_params) < 0.01 < rmse(x, y)
    # Decreasing relation: the mapping flips direction, PLCC after the fit is positive as papers report it.
    assert plcc(-x, y, fit=n_params) > 0.9999


@pytest.mark.parametrize("n_params", [4, 5])
def test_logistic_fit_is_monotonic_and_scale_free(n_params: int) -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 2, 300)
    y = x ** 2 + rng.normal(0, 0.1, 300)  # not monotonic: an unconstrained fit could bend back
    f = fit_logistic(x, y, n_params)
    grid = np.linspace(-1, 2, 500)
    steps = np.diff(f(grid))
    assert np.all(steps >= -1e-12) or np.all(steps <= 1e-12)
    # Standardising the input makes the fitted correlation independent of the prediction's units.
    assert plcc(x * 1000 + 5e4, y, fit=n_params) == pytest.approx(plcc(x, y, fit=n_params), abs=1e-6)


def test_constant_input_is_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (srcc, krcc, plcc):
            assert math.isnan(fn([1, 1, 1, 1], [1, 2, 3, 4]))
            assert math.isnan(fn([1, 2, 3, 4], [5, 5, 5, 5]))
        assert math.isnan(plcc([1, 1, 1], [1, 2, 3], fit=5))
        report = correlation_report([0.5] * 5, [1, 2, 3, 4, 5])
    assert report["pred_constant"] and report["logistic"] == "none" and math.isnan(report["plcc_fit"])
    assert report["mae"] == pytest.approx(np.mean(np.abs(0.5 - np.arange(1, 6))))
    with pytest.raises(ValueError, match="constant"):
        fit_logistic([2, 2, 2], [1, 2, 3])


def test_correlation_report() -> None:
    x, y = _logistic_data(100, 3)
    r = correlation_report(x, y)
    assert r["n"] == 100 and r["logistic"] == "5"
    assert r["srcc"] == pytest.approx(1.0) and r["krcc"] == pytest.approx(1.0)
    assert r["plcc"] == pytest.approx(plcc(x, y)) and r["plcc_fit"] > r["plcc"]
    assert r["rmse_fit"] < r["rmse"] and r["mae_fit"] < r["mae"]


@pytest.mark.parametrize("pred, target, match", [
    ([1, 2, 3], [1, 2], "differ in length"),
    ([1, 2], [1, 2], "at least 3"),
    ([1, 2, math.nan], [1, 2, 3], "pred holds 1 NaN"),
    ([1, 2, 3], [1, math.inf, 3], "target holds 1 NaN/inf"),
    ([[1, 2, 3]], [[1, 2, 3]], "1-D"),
])
def test_bad_input_is_named(pred: list, target: list, match: str) -> None:
    for fn in (srcc, krcc, plcc, mae, rmse, correlation_report):
        with pytest.raises(ValueError, match=match):
            fn(pred, target)
    with pytest.raises(ValueError, match="n_params"):
        fit_logistic([1, 2, 3], [1, 2, 3], 3)
