"""EDC: hand-computed cases, a brute-force reference, invariances, the theoretical best curve, and the plots."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fiqa_compile.eval import EDC, best_curve, edc, edc_curve, similarity_threshold, step_pauc

# ---------------------------------------------------------------------------------------------- hand cases
# Eight genuine comparisons, threshold 0.5 (a match is score >= 0.5):
#   score  q1  q2  -> pair quality min(q1, q2)   false non-match?
#   0.2    10  50  -> 10                          yes
#   0.9    20  20  -> 20                          no
#   0.4    30  90  -> 30                          yes
#   0.8    30  40  -> 30                          no
#   0.7    60  50  -> 50                          no
#   0.3    80  70  -> 70                          yes
#   0.6    90  95  -> 90                          no
#   0.5    95  99  -> 95                          no (score == threshold matches)
HAND_SCORES = [0.2, 0.9, 0.4, 0.8, 0.7, 0.3, 0.6, 0.5]
HAND_QUALITIES = [[10, 50], [20, 20], [30, 90], [30, 40], [60, 50], [80, 70], [90, 95], [95, 99]]
# Discarding by pair quality 10, 20, {30, 30 together: tied}, 50, 70, 90, 95 with 3 FNMs at the start:
#   discarded 0/8 -> 3 FNM / 8 kept = 0.375
#   discarded 1/8 (q=10, an FNM)       -> 2/7
#   discarded 2/8 (q=20)                -> 2/6 = 1/3
#   discarded 4/8 (both q=30, one FNM)  -> 1/4
#   discarded 5/8 (q=50)                -> 1/3
#   discarded 6/8 (q=70, an FNM)        -> 0/2
#   discarded 7/8 (q=90)                -> 0/1
HAND_DISCARD = [0, 1 / 8, 2 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8]
HAND_ERRORS = [3 / 8, 2 / 7, 1 / 3, 1 / 4, 1 / 3, 0, 0]
# Step-wise pAUC: pAUC@0.2 = 0.125 * 3/8 + 0.075 * 2/7; pAUC@0.3 = 0.125 * 3/8 + 0.125 * 2/7 + 0.05 * 1/3.
HAND_PAUC = {0.2: 0.125 * 3 / 8 + 0.075 * 2 / 7, 0.3: 0.125 * 3 / 8 + 0.125 * 2 / 7 + 0.05 / 3}
# Theoretical best (discard the 3 FNMs first): m = 0..3 -> (3 - m) / (8 - m) = 3/8, 2/7, 1/6, 0 at m/8.
# pAUC_best@0.2 = 0.125 * 3/8 + 0.075 * 2/7 (= the real curve so far); @0.3 = 0.125*3/8 + 0.125*2/7 + 0.05 * 1/6.
HAND_PAUC_BEST = {0.2: 0.125 * 3 / 8 + 0.075 * 2 / 7, 0.3: 0.125 * 3 / 8 + 0.125 * 2 / 7 + 0.05 / 6}

# Ten impostor scores; at FMR target f the threshold is the lowest score v with #(score >= v) <= floor(10 f).
HAND_IMPOSTORS = [0.1, 0.2, 0.2, 0.3, 0.4, 0.45, 0.45, 0.5, 0.55, 0.6]


def test_hand_fnmr_edc() -> None:
    c = edc_curve(HAND_SCORES, HAND_QUALITIES, threshold=0.5)
    np.testing.assert_allclose(c.discard_fractions, HAND_DISCARD)
    np.testing.assert_allclose(c.errors, HAND_ERRORS)
    np.testing.assert_array_equal(c.quality_thresholds, [10, 20, 30, 50, 70, 90, 95])
    np.testing.assert_array_equal(c.discard_counts, [0, 1, 2, 4, 5, 6, 7])
    assert (c.n_comparisons, c.n_errors, c.start_error) == (8, 3, 0.375)
    for limit in (0.2, 0.3):
        assert c.pauc[limit] == pytest.approx(HAND_PAUC[limit], abs=1e-15)
        assert c.pauc_best[limit] == pytest.approx(HAND_PAUC_BEST[limit], abs=1e-15)
    assert c.pauc_excess[0.2] == pytest.approx(0.0, abs=1e-15)
    assert c.pauc_excess[0.3] == pytest.approx(0.05 * (1 / 3 - 1 / 6), abs=1e-15)
    np.testing.assert_allclose(c.best_discard_fractions, [0, 1 / 8, 2 / 8, 3 / 8])
    np.testing.assert_allclose(c.best_errors, [3 / 8, 2 / 7, 1 / 6, 0])
    # error_at reads the step in effect: 0.3 lies on the step that starts at 0.25.
    assert c.error_at(0.3) == pytest.approx(1 / 3)
    assert c.error_at(0.0) == pytest.approx(3 / 8)


@pytest.mark.parametrize("fmr, expected, achieved", [
    (0.1, 0.6, 0.1),    # 1 impostor may pass: 0.6 (1 at/above); 0.55 would admit 2
    (0.2, 0.55, 0.2),   # 2 may pass: 0.55 admits 0.55, 0.6
    (0.3, 0.5, 0.3),    # 3 may pass: 0.5 admits 0.5, 0.55, 0.6
    (0.4, 0.5, 0.3),    # 4 may pass, but 0.45 is tied twice and would admit 5: stay at 0.5 (FMR 0.3 < 0.4)
])
def test_hand_threshold(fmr: float, expected: float, achieved: float) -> None:
    tau = similarity_threshold(HAND_IMPOSTORS, fmr)
    assert tau == expected
    assert np.mean(np.array(HAND_IMPOSTORS) >= tau) == pytest.approx(achieved)


def test_threshold_is_fixed_once_from_impostors() -> None:
    # FMR 0.3 over HAND_IMPOSTORS gives threshold 0.5, so the full pipeline reproduces the hand FNMR curve, and
    # the threshold does not move with the discarding (the curve would otherwise drift to the start error).
    c = edc(HAND_SCORES, HAND_QUALITIES, HAND_IMPOSTORS, fmr=0.3)
    assert c.threshold == 0.5 and c.fmr_target == 0.3 and c.fmr_at_threshold == pytest.approx(0.3)
    np.testing.assert_allclose(c.errors, HAND_ERRORS)


def test_hand_fmr_edc() -> None:
    # Impostor pair qualities 9, 8, ..., 2, 1, 1 for HAND_IMPOSTORS; threshold 0.5 (FMR 0.3): false matches are
    # 0.5 (q=2), 0.55 and 0.6 (both q=1, a tie). Discard q=1 (2 pairs, both FM) -> 1/8 at 0.2; q=2 -> 0/7 at 0.3.
    q = [9, 8, 7, 6, 5, 4, 3, 2, 1, 1]
    c = edc(None, None, HAND_IMPOSTORS, fmr=0.3, impostor_qualities=q, error_type="fmr")
    np.testing.assert_allclose(c.discard_fractions, [0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    np.testing.assert_allclose(c.errors, [0.3, 1 / 8, 0, 0, 0, 0, 0, 0, 0])
    # pAUC@0.3 = 0.2 * 0.3 + 0.1 * 1/8; best: 0.3, 2/9, 1/8, 0 at 0, 0.1, 0.2, 0.3 -> 0.1 * (0.3 + 2/9 + 1/8).
    assert c.pauc[0.3] == pytest.approx(0.2 * 0.3 + 0.1 / 8, abs=1e-15)
    assert c.pauc_best[0.3] == pytest.approx(0.1 * (0.3 + 2 / 9 + 1 / 8), abs=1e-15)


def test_pair_quality_is_configurable() -> None:
    s = np.array(HAND_SCORES)
    q = np.array(HAND_QUALITIES, dtype=float)
    by_mean = edc_curve(s, q, 0.5, pair_quality="mean")
    np.testing.assert_allclose(by_mean.quality_thresholds, np.unique(q.mean(1)))
    by_max = edc_curve(s, q, 0.5, pair_quality=np.maximum)
    direct = edc_curve(s, q.max(1), 0.5)
    np.testing.assert_array_equal(by_max.errors, direct.errors)
    assert not np.array_equal(by_max.errors, edc_curve(s, q, 0.5).errors)


# ------------------------------------------------------------------------------------- brute-force reference
def _brute_force(scores: np.ndarray, pair_q: np.ndarray, threshold: float, error_type: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Loop over every distinct quality threshold t, keep q >= t, recount the errors from scratch."""
    d, e = [], []
    for t in np.unique(pair_q):
        kept = pair_q >= t
        errs = scores[kept] < threshold if error_type == "fnmr" else scores[kept] >= threshold
        d.append(1.0 - kept.sum() / len(scores))
        e.append(errs.sum() / kept.sum())
    return np.array(d), np.array(e)


def _brute_pauc(d: np.ndarray, e: np.ndarray, n: int, limit: float) -> float:
    """Integrate discard count by discard count: on [k/n, (k+1)/n) the error is the last step at or before k/n."""
    total = 0.0
    for k in range(n):
        lo = k / n
        if lo >= limit:
            break
        step = max(i for i in range(len(d)) if d[i] <= lo + 1e-12)
        total += e[step] * (min((k + 1) / n, limit) - lo)
    return total


@pytest.mark.parametrize("seed, error_type", [(0, "fnmr"), (1, "fnmr"), (2, "fmr")])
def test_matches_brute_force_with_ties(seed: int, error_type: str) -> None:
    rng = np.random.default_rng(seed)
    n = 600
    scores = rng.normal(0.5, 0.2, n).round(2)            # ties in scores, some exactly at the threshold
    sample_q = rng.integers(0, 25, size=(n, 2)).astype(float)  # heavy ties in quality
    threshold = 0.4 if error_type == "fnmr" else 0.7
    c = edc_curve(scores, sample_q, threshold, error_type=error_type, limits=(0.1, 0.2, 0.3))
    ref_d, ref_e = _brute_force(scores, sample_q.min(1), threshold, error_type)
    np.testing.assert_allclose(c.discard_fractions, ref_d, atol=1e-12)
    np.testing.assert_allclose(c.errors, ref_e, atol=1e-12)
    for limit in (0.1, 0.2, 0.3):
        assert c.pauc[limit] == pytest.approx(_brute_pauc(ref_d, ref_e, n, limit), abs=1e-12)
    # The best curve by brute force: discard one error at a time.
    f = int(np.sum(scores < threshold) if error_type == "fnmr" else np.sum(scores >= threshold))
    bd = [m / n for m in range(f + 1)]
    be = [(f - m) / (n - m) for m in range(f + 1)]
    np.testing.assert_allclose(c.best_discard_fractions, bd)
    np.testing.assert_allclose(c.best_errors, be)


def test_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    imp = rng.normal(0, 1, 5000).round(1)  # many ties
    for fmr in (1e-3, 1e-2, 0.05):
        tau = similarity_threshold(imp, fmr)
        fmr_at = lambda v: np.mean(imp >= v)  # noqa: E731
        assert fmr_at(tau) <= fmr
        # Every observed score below tau would exceed the target: tau is the lowest admissible one.
        lower = np.unique(imp[imp < tau])
        assert len(lower) == 0 or fmr_at(lower[-1]) > fmr
    # The top score tied 5 times where 1 may pass: only a threshold above every impostor meets FMR <= 1e-3.
    tied_top = np.r_[np.full(5, 0.9), np.full(995, 0.1)]
    tau = similarity_threshold(tied_top, 1e-3)
    assert 0.9 < tau < 0.9 + 1e-12 and np.mean(tied_top >= tau) == 0.0


# ------------------------------------------------------------------------------------------------ invariances
def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genuine scores that depend on quality (as in a real system), and independent impostor scores."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, size=(n, 2))
    gen = 0.4 + 0.5 * q.min(1) + rng.normal(0, 0.08, n)
    imp = rng.normal(0, 0.1, n)
    return gen, q, imp


def test_monotone_quality_transform_leaves_edc_unchanged() -> None:
    gen, q, imp = _synthetic(20000, 4)
    q = np.round(q * 50) / 50  # with ties
    a = edc(gen, q, imp, fmr=1e-3)
    b = edc(gen, np.exp(3 * q) * 7 - 2, imp, fmr=1e-3)  # strictly increasing map commutes with min
    np.testing.assert_array_equal(a.discard_fractions, b.discard_fractions)
    np.testing.assert_array_equal(a.errors, b.errors)
    assert a.pauc == b.pauc
    # A decreasing map inverts the order and must change the curve (the test can fail).
    c = edc(gen, -q, imp, fmr=1e-3, pair_quality="mean")
    assert c.pauc[0.3] > a.pauc[0.3]


def test_random_quality_gives_flat_curve() -> None:
    gen, _, imp = _synthetic(200000, 5)
    rng = np.random.default_rng(6)
    c = edc(gen, rng.uniform(size=len(gen)), imp, fmr=1e-3)
    assert 0.01 < c.start_error < 0.1  # ~3600 false non-matches: enough for a 10% band
    for d in (0.1, 0.2, 0.3, 0.5):
        assert abs(c.error_at(d) - c.start_error) < 0.1 * c.start_error
    # Flat curve: pAUC ~ limit * start error, far above the best.
    assert c.pauc[0.3] == pytest.approx(0.3 * c.start_error, rel=0.03)
    assert c.pauc_excess[0.3] > 0.5 * c.pauc[0.3]


def test_informative_quality_beats_random_and_oracle_is_best() -> None:
    gen, q, imp = _synthetic(50000, 7)
    informative = edc(gen, q, imp, fmr=1e-3)
    rand = edc(gen, np.random.default_rng(8).uniform(size=len(gen)), imp, fmr=1e-3)
    assert informative.pauc_excess[0.3] < 0.5 * rand.pauc_excess[0.3]
    # Quality = the genuine score itself discards the false non-matches first: the curve IS the best curve.
    oracle = edc(gen, gen, imp, fmr=1e-3)
    for limit in (0.2, 0.3):
        assert oracle.pauc_excess[limit] == pytest.approx(0.0, abs=1e-12)
    assert oracle.error_at(oracle.start_error + 1e-9) == 0.0
    # And no ordering beats the floor.
    for c in (informative, rand):
        assert all(v >= -1e-15 for v in c.pauc_excess.values())


def test_best_curve_all_errors() -> None:
    d, e = best_curve(4, 4)  # every comparison is an error: nothing can be cleaned, error stays 1
    np.testing.assert_allclose(d, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(e, [1, 1, 1, 1])


def test_step_pauc_limit_past_last_step_extends_it() -> None:
    # One step 0.5 from 0, then 0.2 from 0.1; to 0.3 -> 0.1 * 0.5 + 0.2 * 0.2.
    assert step_pauc(np.array([0.0, 0.1]), np.array([0.5, 0.2]), 0.3) == pytest.approx(0.09)
    assert step_pauc(np.array([0.0, 0.1]), np.array([0.5, 0.2]), 0.0) == 0.0


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=[0.1, 0.2], qualities=[1.0]), "differ in length"),
    (dict(scores=[0.1, math.nan], qualities=[1.0, 2.0]), "NaN"),
    (dict(scores=[0.1, 0.2], qualities=[[1.0, 2.0, 3.0]] * 2), r"\(n, 2\)"),
    (dict(scores=[], qualities=[]), "empty"),
])
def test_bad_input_is_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        edc_curve(threshold=0.5, **kwargs)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="at least 1000 impostor"):
        similarity_threshold(np.zeros(999), 1e-3)
    with pytest.raises(ValueError, match="error_type"):
        edc_curve([0.1], [1.0], 0.5, error_type="eer")
    with pytest.raises(ValueError, match="unknown pair_quality"):
        edc_curve([0.1], [[1.0, 2.0]], 0.5, pair_quality="median")
    with pytest.raises(ValueError, match="impostor_qualities"):
        edc(None, None, HAND_IMPOSTORS, fmr=0.3, error_type="fmr")


# ------------------------------------------------------------------------------------------------------- plots
def _is_png(path) -> tuple[int, int]:
    import cv2

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.std() > 5  # decodes and is not blank
    return img.shape[1], img.shape[0]


def test_plots_write_pngs(tmp_path) -> None:
    from fiqa_compile.eval import plots  # matplotlib is a compile dependency: required, not skipped

    gen, q, imp = _synthetic(5000, 9)
    curves = {"min-quality": edc(gen, q, imp, fmr=1e-2),
              "random": edc(gen, np.random.default_rng(1).uniform(size=len(gen)), imp, fmr=1e-2)}
    p = plots.plot_edc(curves, tmp_path / "sub" / "edc.png", limit=0.3)
    assert p == tmp_path / "sub" / "edc.png" and _is_png(p) == (640, 480)
    teacher = q.min(1)
    student = teacher + np.random.default_rng(2).normal(0, 0.05, len(teacher))
    assert _is_png(plots.plot_scatter(student, teacher, tmp_path / "scatter.png")) == (560, 520)
    assert _is_png(plots.plot_histograms({"genuine": gen, "impostor": imp}, tmp_path / "hist.png")) == (640, 480)


def test_plot_edc_refuses_incomparable_curves(tmp_path) -> None:
    from fiqa_compile.eval import plots

    gen, q, imp = _synthetic(3000, 10)
    a = edc(gen, q, imp, fmr=1e-2)
    b = edc(gen, q, imp, fmr=1e-3)
    with pytest.raises(ValueError, match="same fixed threshold"):
        plots.plot_edc({"a": a, "b": b}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=".png"):
        plots.plot_edc({"a": a}, tmp_path / "x.pdf")
    assert isinstance(a, EDC)
