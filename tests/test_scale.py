"""The calibrated utility scale (fiqa_compile.scale) and its manifest section (fiqa_sdk.bundle.ScaleSpec).

The fit is checked on synthetic cases whose answer is known exactly: a success curve the isotonic fit must
recover, and a frame set whose embeddings make every face succeed in a set share of its comparisons. The manifest's
scale section is written by the real bundle writer and verified on load; a bad one is refused by name. The tests
that need the lfw-dev photos or a built frame set skip where ``../shared`` (or the set) is absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle_fixtures import THRESHOLDS, TinyQualityNet, export_onnx, score_specs, write_test_bundle
from fiqa_compile import scale as sc
from fiqa_compile.errors import CompileError
from fiqa_sdk.bundle import (
    MANIFEST,
    MAX_SCALE_KNOTS,
    BundleError,
    ScaleSpec,
    ScoreSpec,
    bundle_id_for,
    load_bundle,
)

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw-dev"
HELDOUT_SET = ROOT / "runs" / "frames" / "heldout-eval"


# ---- the isotonic fit -----------------------------------------------------------------------------------------------

def test_pool_adjacent_violators_gives_the_known_answers():
    np.testing.assert_allclose(sc.pav([1, 3, 2, 4]), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(sc.pav([3, 1], [1, 3]), [1.5, 1.5])  # the weighted mean of the pooled pair
    np.testing.assert_allclose(sc.pav([5, 4, 3, 2, 1]), [3] * 5)
    np.testing.assert_allclose(sc.pav([0, 1, 1, 2]), [0, 1, 1, 2])  # already monotone: unchanged


def test_the_isotonic_map_recovers_a_known_success_curve():
    """Faces whose chance of a match is sigmoid(2 z): ten comparisons each, the fitted map must give that chance."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=20_000)
    p = 1 / (1 + np.exp(-2 * z))
    observed = rng.binomial(10, p) / 10
    x, y = sc.isotonic_knots(z, observed)
    assert 2 <= len(x) <= sc.MAX_KNOTS and np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
    grid = np.linspace(-1.5, 1.5, 61)
    truth = 1 / (1 + np.exp(-2 * grid))
    assert np.max(np.abs(np.interp(grid, x, y) - truth)) < 0.04
    # and the reliability of that map on new faces drawn the same way is near perfect
    z2 = rng.normal(size=20_000)
    obs2 = rng.binomial(10, 1 / (1 + np.exp(-2 * z2))) / 10
    rel = sc.reliability(np.interp(z2, x, y), obs2)
    assert rel["ece"] < 0.02 and sum(b["n"] for b in rel["bins"]) == 20_000 == rel["faces"]


def test_a_map_without_a_trend_is_flat_and_a_constant_score_is_refused():
    x, y = sc.isotonic_knots(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.9, 0.1, 0.9, 0.1]))
    assert len(x) == 2 and y[0] == y[1] == pytest.approx(0.5)
    with pytest.raises(sc.ScaleError, match="constant score"):
        sc.isotonic_knots(np.zeros(10), np.linspace(0, 1, 10))


# ---- outcomes and the whole fit on a synthetic frame set ------------------------------------------------------------

def synthetic_set(people: int = 40, photos: int = 3, dim: int = 512, seed: int = 0):
    """A frame set whose comparisons succeed by construction (the threshold at FMR 1e-3 lands near 0.03).

    Every person has a direction v and every photo i its own direction u_i (all orthonormal). Clean photo i is
    sqrt(0.6) v + sqrt(0.4) u_i: it matches every other clean photo of the person (cosine 0.6). Version 1 of photo i
    is u_(i+1): it matches photo i+1 (cosine 0.63) and no other, so half of its two comparisons succeed. Version 2 is
    -v plus a little noise (the impostor scores' spread): it matches nothing. The student's raw outputs are +1, 0 and -1 for the three (jittered), so
    the scale must map them to 100, 50 and 0.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, people * (photos + 1))))[0].T
    rows = {k: [] for k in ("identity", "photo", "version", "kind", "detected", "emb", "z", "crop", "lm5")}
    template = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]], np.float32)
    texture = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    photo_id = 0
    for p in range(people):
        v = basis[p * (photos + 1)]
        us = basis[p * (photos + 1) + 1:(p + 1) * (photos + 1)]
        for i in range(photos):
            for version, (emb, z) in enumerate([(np.sqrt(0.6) * v + np.sqrt(0.4) * us[i], 1.0),
                                                (us[(i + 1) % photos], 0.0),
                                                (-v + 0.3 * rng.normal(size=dim) / np.sqrt(dim), -1.0)]):
                rows["identity"].append(f"person_{p:03d}")
                rows["photo"].append(photo_id)
                rows["version"].append(version)
                rows["kind"].append("clean" if version == 0 else "jpeg")
                rows["detected"].append(True)
                rows["emb"].append(emb / np.linalg.norm(emb))
                rows["z"].append(z + rng.uniform(-0.1, 0.1))
                rows["crop"].append(texture)
                rows["lm5"].append(template)
            photo_id += 1
    data = {k: np.asarray(v) for k, v in rows.items() if k not in ("emb", "z")}
    emb = np.asarray(rows["emb"], np.float32)
    data["emb_dlib"], data["emb_mfn"] = emb, emb.copy()
    z = np.stack([np.asarray(rows["z"]), np.zeros(len(emb))], 1)
    info = {"sha256": "f" * 64, "config": {"held_out": 0.1, "seed": 0, "mirror_average": False},
            "scores": [{"name": "utility", "index": 0, "mean": 0.0, "std": 1.0, "teacher_p01": -2.0, "teacher_p99": 2.0},
                       {"name": "perceptual", "index": 1, "mean": 0.0, "std": 1.0, "teacher_p01": -2.0,
                        "teacher_p99": 2.0}]}
    return data, z, info


def test_each_face_counts_its_successful_comparisons_with_the_persons_other_clean_photos():
    data, _, _ = synthetic_set(people=12)
    out = sc.face_outcomes(data, np.arange(len(data["photo"])), impostors=50_000)
    expected = {0: 1.0, 1: 0.5, 2: 0.0}  # by version: see synthetic_set
    for version, share in expected.items():
        m = out.version == version
        np.testing.assert_allclose(out.success[m], share)
    assert np.all(out.references == 2)  # two other photos each, never the face's own photo
    assert all(0.005 < t < 0.2 for t in out.thresholds.values())


def test_the_fit_on_a_synthetic_frame_set_gives_the_known_map():
    data, z, info = synthetic_set()
    rows = np.arange(len(data["photo"]))
    scale = sc.fit_scale(data, rows, z, info, record={"frames": ["synthetic"]})
    x, y = np.array(scale["x"]), np.array(scale["y"])
    np.testing.assert_allclose(np.interp([-1.0, 0.0, 1.0], x, y), [0, 50, 100], atol=1.5)
    for fr in sc.FR_MODELS:  # both FR models see the same embeddings here, so their own maps agree too
        own = scale["per_fr_model"][fr]
        np.testing.assert_allclose(np.interp([-1.0, 0.0, 1.0], own["x"], own["y"]), [0, 50, 100], atol=1.5)
        assert scale["reliability"][fr]["own"]["mean_abs_error"] < 0.03
    fit = scale["fitted_on"]
    assert fit["people"] == 40 and fit["faces"] == 360 and fit["comparisons"] == 720
    assert fit["student_sha256"] == info["sha256"] and fit["frames"] == ["synthetic"]
    gate = scale["gate"]
    at = gate["thresholds"].index(60)
    # clean faces score ~100 and are kept; the other two thirds are rejected; kept pairs are clean pairs: no FNMR
    assert gate["reject_clean"][at] == 0.0 and gate["reject_all"][at] == pytest.approx(2 / 3, abs=1e-4)
    assert gate["fnmr_kept"]["dlib"][at] == 0.0 and gate["fnmr_all"]["dlib"] > 0.2
    # what a manifest carries is a valid ScaleSpec, and the device's map is the fit's
    spec = ScaleSpec.from_dict(sc.manifest_scale(scale))
    assert spec.calibrated and spec.fr_models == sc.FR_MODELS
    np.testing.assert_allclose(spec.apply(np.array([0.0])), np.interp([0.0], x, y))
    assert "FMR 0.001" in spec.summary() and "9 in 10" in spec.summary()
    json.dumps(scale, allow_nan=False)  # student.json stays strict JSON


def test_too_few_people_make_no_scale():
    data, z, info = synthetic_set(people=4)
    with pytest.raises(sc.ScaleError, match="too few"):
        sc.fit_scale(data, np.arange(len(data["photo"])), z, info)


# ---- thresholds from a deployment target ----------------------------------------------------------------------------

def gate_record() -> dict:
    """Curves over 0..100: the clean-face rejection grows by 0.2 % a point of threshold from 2 % (the perceptual
    check), the FNMR of kept pairs falls from 0.2 (dlib) and 0.06 (MobileFaceNet)."""
    t = np.arange(101)
    return {"gate": {"thresholds": t.tolist(), "perceptual_accept": 40.0, "perceptual_rule": "test",
                     "reject_clean": (0.02 + 0.002 * t).tolist(), "reject_clean_gate": (0.05 + 0.002 * t).tolist(),
                     "reject_all": (0.1 + 0.005 * t).tolist(), "pairs_kept": (1 - 0.005 * t).tolist(),
                     "fnmr_kept": {"dlib": (0.2 - 0.0015 * t).tolist(), "mobilefacenet": (0.06 - 0.0005 * t).tolist()},
                     "fnmr_all": {"dlib": 0.2, "mobilefacenet": 0.06}, "clean_faces": 100, "faces": 500,
                     "genuine_pairs": 50, "genuine_pairs_degraded": 25}}


def test_a_rejection_budget_gives_the_highest_threshold_at_which_the_gate_stays_within_it():
    """The budget is the gate's whole per-photo verdict (5 % of clean faces fail its measure checks here)."""
    thresholds, expected = sc.thresholds_for_target(gate_record(), sc.GateTarget.parse("reject=0.15"))
    assert thresholds == {"utility_accept": 50.0, "utility_release": 40.0, "perceptual_accept": 40.0,
                          "perceptual_release": 30.0}
    assert expected["reject_clean_gate"] == pytest.approx(0.15) and expected["reject_clean"] == pytest.approx(0.12)
    assert expected["target"] == "reject=0.15"
    with pytest.raises(sc.ScaleError, match=r"sharpness\) alone reject 5.0% of clean faces"):
        sc.thresholds_for_target(gate_record(), sc.GateTarget.parse("reject=0.04"))


def test_an_fnmr_target_gives_the_lowest_threshold_that_reaches_it():
    # mean of both models: 0.13 - 0.001 t <= 0.08 from t = 50; dlib alone: 0.2 - 0.0015 t <= 0.11 from t = 60
    assert sc.thresholds_for_target(gate_record(), sc.GateTarget.parse("fnmr=0.08"))[0]["utility_accept"] == 50
    assert sc.thresholds_for_target(gate_record(), sc.GateTarget.parse("fnmr:dlib=0.11"))[0]["utility_accept"] == 60
    with pytest.raises(sc.ScaleError, match="lowest FNMR among kept pairs is 0.0500"):
        sc.thresholds_for_target(gate_record(), sc.GateTarget.parse("fnmr:dlib=0.01"))
    with pytest.raises(sc.ScaleError, match="no FNMR curve for FR model 'arcface'"):
        sc.thresholds_for_target(gate_record(), sc.GateTarget.parse("fnmr:arcface=0.05"))


@pytest.mark.parametrize("text", ["reject", "reject=", "reject=1.5", "reject=0", "fnmr=abc", "accept=0.1",
                                  "reject:dlib=0.1", "fnmr=nan"])
def test_a_gate_target_that_cannot_be_read_is_refused(text):
    with pytest.raises(sc.ScaleError, match="give reject=R"):
        sc.GateTarget.parse(text)


def test_the_compile_takes_its_thresholds_from_the_target_then_the_overrides():
    from fiqa_compile.compiler import CompileOptions, choose_thresholds, shipped_scale

    record = gate_record()
    opts = CompileOptions(target="cpu", gate_target="reject=0.15", gate=("utility_accept=70",))
    thresholds, choice = choose_thresholds(np.zeros((0, 2)), None, record, opts)
    # the hand-set accept wins, and its release moves with it (the target's gap of 10 kept)
    assert thresholds["utility_accept"] == 70 and thresholds["utility_release"] == 60
    assert choice["how"] == "target" and choice["target"] == "reject=0.15" and choice["overrides"] == ["utility_accept=70"]
    default = choose_thresholds(np.zeros((0, 2)), None, record, CompileOptions(target="cpu"))[1]
    assert default["target"] == str(sc.GateTarget.parse(sc.DEFAULT_GATE_TARGET)) and default["default_target"] is True
    # a student without a scale: --gate-target is refused, before any work is done
    with pytest.raises(CompileError, match="no fitted utility scale"):
        shipped_scale({"sha256": "a" * 64}, CompileOptions(target="cpu", gate_target="reject=0.1"))
    assert shipped_scale({"sha256": "a" * 64}, CompileOptions(target="cpu")) is None


def test_a_scale_ships_only_with_the_student_and_scoring_it_was_fitted_for(capsys):
    from fiqa_compile.compiler import CompileOptions, shipped_scale

    data, z, info = synthetic_set()
    scale = sc.fit_scale(data, np.arange(len(data["photo"])), z, info)
    assert sc.scale_problem(scale, info, mirror_average=False) is None
    assert "fitted for student weights ffffffffffff" in sc.scale_problem(scale, {"sha256": "0" * 64}, False)
    assert "one pass of the student" in sc.scale_problem(scale, info, mirror_average=True)
    assert shipped_scale({**info, "scale": scale}, CompileOptions(target="cpu", mirror_average=True)) is None
    assert "keeps the uncalibrated percentile scale" in capsys.readouterr().err
    with pytest.raises(CompileError, match="cannot|one pass"):
        shipped_scale({**info, "scale": scale}, CompileOptions(target="cpu", mirror_average=True,
                                                               gate_target="reject=0.1"))


def test_held_out_people_are_refused_as_fitting_people(tmp_path):
    for person in (f"p{i:02d}" for i in range(20)):
        (tmp_path / person).mkdir()
        (tmp_path / person / "a.jpg").write_bytes(b"")
    from fiqa_calibration import held_out_people

    held = sorted(held_out_people(f"p{i:02d}" for i in range(20)))
    train = [f"p{i:02d}" for i in range(20) if f"p{i:02d}" not in held]
    assert "none of the 3 held-out people" in sc.check_training_side(np.array(train), tmp_path)
    with pytest.raises(sc.ScaleError, match="held-out people"):
        sc.check_training_side(np.array(train + held[:1]), tmp_path)


@pytest.mark.skipif(not (LFW.is_dir() and (HELDOUT_SET / "settings.json").is_file()),
                    reason="needs ../shared/data/lfw-dev and runs/frames/heldout-eval (the benchmark's frame set)")
def test_the_benchmarks_held_out_frame_set_cannot_be_fitted_on():
    from fiqa_compile.labels.frame_set import load

    with pytest.raises(sc.ScaleError, match="held-out people"):
        sc.check_training_side(load(HELDOUT_SET)["identity"], LFW)


def test_the_embedded_students_scale_belongs_to_its_weights():
    from fiqa_compile.student_store import EMBEDDED_STUDENT

    info = json.loads((EMBEDDED_STUDENT / "student.json").read_text())
    if "scale" not in info:
        pytest.skip("the embedded student has no fitted scale yet (python -m fiqa_compile.scale)")
    assert sc.scale_problem(info["scale"], info, bool(info["config"].get("mirror_average"))) is None
    fit = info["scale"]["fitted_on"]
    assert fit["complete"] and not set(fit["frames"]) & {"runs/frames/heldout-eval"}
    for fr in sc.FR_MODELS:  # out of fold, on training-side people the student did not learn from
        assert info["scale"]["reliability"][fr]["own"]["mean_abs_error"] <= 0.06


# ---- the manifest's scale section -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return export_onnx(TinyQualityNet(seed=0), tmp_path_factory.mktemp("scale_model") / "student.onnx")


KNOTS = {"x": [-3.0, -1.0, 0.0, 2.0], "y": [0.0, 20.0, 70.0, 97.5]}


def calibrated_specs() -> list[ScoreSpec]:
    u, p = score_specs()
    scale = ScaleSpec.from_dict({"kind": "isotonic", "meaning": "100 x P(match at FMR 1e-3) (test)", **KNOTS,
                                 "fr_models": ["dlib", "mobilefacenet"], "fmr": 1e-3, "fitted_on": {"faces": 9},
                                 "per_fr_model": {"dlib": {"x": [-1.0, 1.0], "y": [10.0, 80.0]}}})
    percentile = ScaleSpec.from_dict({"kind": "percentile", "meaning": "uncalibrated (test)"})
    return [ScoreSpec(**{**u.__dict__, "scale": scale}), ScoreSpec(**{**p.__dict__, "scale": percentile})]


@pytest.fixture()
def calibrated(tmp_path, onnx_model) -> Path:
    return write_test_bundle(tmp_path / "calibrated", onnx_model, specs=calibrated_specs())


def test_a_calibrated_bundle_is_schema_3_and_scores_through_its_knots(calibrated, onnx_model, tmp_path):
    b = load_bundle(calibrated)
    assert b.manifest["schema_version"] == 3 and b.scores == tuple(calibrated_specs())
    u, p = b.score("utility"), b.score("perceptual")
    assert u.calibrated and not p.calibrated
    z = np.array([[-5.0, 0.3], [-2.0, 0.3], [0.5, 0.3], [9.0, 0.3]])
    np.testing.assert_allclose(b.to_0_100(z)[:, 0], [0.0, 10.0, 76.875, 97.5])  # np.interp, flat beyond the knots
    np.testing.assert_allclose(b.to_0_100(z)[:, 1], p.to_0_100(z[:, 1]))  # the percentile map, as before
    np.testing.assert_allclose(u.scale.apply(np.array([0.0]), fr_model="dlib"), [45.0])
    with pytest.raises(KeyError, match="no map of its own for FR model 'mobilefacenet'"):
        u.scale.apply(np.array([0.0]), fr_model="mobilefacenet")
    # a bundle that only documents its scales stays readable by older SDKs
    plain = [ScoreSpec(**{**s.__dict__, "scale": ScaleSpec("percentile", "uncalibrated (test)")}) for s in score_specs()]
    doc = load_bundle(write_test_bundle(tmp_path / "documented", onnx_model, specs=plain))
    assert doc.manifest["schema_version"] == 1
    np.testing.assert_allclose(doc.to_0_100(z), load_bundle(write_test_bundle(tmp_path / "bare", onnx_model)).to_0_100(z))


def test_the_scorer_says_what_its_scores_mean(calibrated):
    from fiqa_sdk import Scorer
    from fiqa_sdk.score_photos import scale_line

    with Scorer(calibrated, detector=None, backend="onnxruntime") as scorer:
        scales = scorer.info.scales
        assert scorer.info.to_dict()["scales"] == scales
    assert scales["utility"].startswith("calibrated: 90 = about 9 in 10 comparisons") and "dlib / mobilefacenet" \
        in scales["utility"]
    assert scales["perceptual"].startswith("uncalibrated: a rank")
    assert scale_line(scales).startswith("scores: utility is calibrated") and "perceptual is uncalibrated" in \
        scale_line(scales)


def _edit_scale(path: Path, edit, schema: int | None = None) -> None:
    """Edit the utility score's scale section and restamp the bundle id (as a compile would), so the load reaches
    the scale check rather than the id check."""
    m = json.loads((path / MANIFEST).read_text())
    edit(m["scores"][0]["scale"])
    if schema is not None:
        m["schema_version"] = schema
    m["bundle_id"] = bundle_id_for({**{e["file"]: e["sha256"] for e in m["models"]}, **m["files"]}, m)
    (path / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(kind="sigmoid"), r"kind='sigmoid' is not one of \['percentile', 'isotonic'\]"),
    (lambda s: s.update(x=[0.0, -1.0, 1.0, 2.0]), "x must be strictly increasing"),
    (lambda s: s.update(x=[0.0, 0.0, 1.0, 2.0]), "x must be strictly increasing"),
    (lambda s: s.update(y=[0.0, 50.0, 40.0, 90.0]), "y must not decrease: the scale is monotone"),
    (lambda s: s.update(y=[0.0, 20.0, 70.0, 100.5]), "outside the 0-100 device scale"),
    (lambda s: s.update(y=[-1.0, 20.0, 70.0, 90.0]), "outside the 0-100 device scale"),
    (lambda s: s.update(y=[0.0, 20.0, "70", 90.0]), "y must hold finite numbers only"),
    (lambda s: s.update(y=[0.0, 20.0, True, 90.0]), "y must hold finite numbers only"),
    (lambda s: s.update(y=[0.0, 20.0, 70.0]), "x has 4 knots and y 3"),
    (lambda s: s.update(x=[0.0], y=[50.0]), "must be a list of 2 to 256 numbers, got 1"),
    (lambda s: s.update(x=list(np.linspace(-3, 3, MAX_SCALE_KNOTS + 1)), y=list(np.linspace(0, 100, MAX_SCALE_KNOTS + 1))),
     "must be a list of 2 to 256 numbers, got 257"),
    (lambda s: s.update(x=[-1e9, -1.0, 0.0, 2.0]), "the model's outputs are z-scores"),
    (lambda s: s.pop("y"), "lacks the required key 'y'"),
    (lambda s: s.pop("fr_models"), "lacks the required key 'fr_models'"),
    (lambda s: s.update(fr_models=[]), "must list 1 to 8 distinct FR model names"),
    (lambda s: s.update(fr_models=["dlib", "dlib"]), "must list 1 to 8 distinct FR model names"),
    (lambda s: s.update(fmr=0.0), "fmr=0.0 must be a false-match rate between 0 and 1"),
    (lambda s: s.update(fmr="1e-3"), "fmr must be a finite number"),
    (lambda s: s.update(meaning=""), "meaning must be a non-empty string"),
    (lambda s: s.update(meaning="x" * 2001), "meaning is 2001 characters; at most 2000"),
    (lambda s: s.update(fitted_on=[1, 2]), "fitted_on must be a JSON object"),
    (lambda s: s.update(fitted_on={"faces": list(range(3000))}), "fitted_on is longer than 8000 characters"),
    (lambda s: s.update(per_fr_model={"arcface": {"x": [0, 1], "y": [0, 1]}}), "per_fr_model must map some of"),
    (lambda s: s.update(per_fr_model={"dlib": {"x": [0, 1], "y": [1, 0]}}), r"per_fr_model\['dlib'\].y must not decrease"),
    (lambda s: s.update(kind="percentile"), r"a percentile scale has no knots, but it holds \['per_fr_model', 'x', 'y'\]"),
])
def test_a_bad_scale_section_is_refused_on_load(calibrated, edit, message):
    _edit_scale(calibrated, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(calibrated)


def test_a_calibrated_scale_in_an_older_schema_is_refused(calibrated):
    """A schema-2 reader would skip the knots and score on percentiles: the writer says 3, an edit to 2 is refused."""
    _edit_scale(calibrated, lambda s: None, schema=2)
    with pytest.raises(BundleError, match="needs schema_version 3; the manifest says 2"):
        load_bundle(calibrated)


def test_the_default_bundles_thresholds_are_unchanged_by_a_scale_free_manifest():
    """The bundles built before the scale (no scale section) load and keep the percentile scale."""
    from fiqa_sdk.bundle import default_bundle_paths

    for path in default_bundle_paths():
        b = load_bundle(path)
        if not b.score("utility").calibrated:
            assert b.score("utility").scale_summary().startswith("uncalibrated")
        assert set(THRESHOLDS) <= set(b.thresholds)


def test_the_report_shows_the_scale_its_reliability_and_what_other_thresholds_would_give(tmp_path):
    from fiqa_compile import report
    from fiqa_compile.compiler import CompileOptions, choose_thresholds, score_scales

    data, z, info = synthetic_set()
    scale = sc.fit_scale(data, np.arange(len(data["photo"])), z, info, record={"frames": ["synthetic"]})
    info = {**info, "scale": scale, "data": "synthetic frames", "perceptual_from": "the test's perceptual score"}
    scales = score_scales(info, scale)
    assert scales["utility"]["kind"] == "isotonic" and scales["perceptual"]["kind"] == "percentile"
    assert "undegraded photos score" in scales["perceptual"]["meaning"]  # where clean faces land on the rank
    thresholds, choice = choose_thresholds(np.zeros((0, 2)), None, scale, CompileOptions(target="cpu",
                                                                                         gate_target="reject=0.5"))
    plots = report.plot_reliabilities(scale, tmp_path)
    assert [p.name for p in plots] == ["reliability_dlib.png", "reliability_mobilefacenet.png"]
    assert all(p.stat().st_size > 10_000 for p in plots)
    text = "\n".join(report.scale_markdown(scales, scale) + report.gate_markdown(thresholds, choice, scale))
    assert "calibrated: 90 = about 9 in 10" in text and "out of fold" in text
    assert f"From the deployment target `reject=0.5`" in text and "| **100** |" in text  # the chosen row, marked
    assert "| 50 | 0.0 % |" in text  # every clean face (utility ~100) is kept at 50
    assert "![reliability, dlib ResNet](plots/reliability_dlib.png)" in text


@pytest.mark.parametrize("flags, message", [
    (["--gate-target", "reject=1.5"], "--gate-target: gate target 'reject=1.5': give reject=R"),
    (["--gate-target", "reject=0.1", "--faces", "FACES"], "a student distilled now from --faces has none"),
    (["--gate", "utility_acept=70"], "--gate: unknown gate key 'utility_acept'"),
    (["--gate", "utility_accept=high"], "--gate: gate override 'utility_accept=high': 'high' is not a number"),
])
def test_gate_options_that_cannot_work_are_refused_before_any_work(tmp_path, capsys, flags, message):
    from fiqa_compile.cli import main

    faces = tmp_path / "faces"
    faces.mkdir()
    args = ["--target", "cpu", "--out", str(tmp_path / "b"), *[str(faces) if f == "FACES" else f for f in flags]]
    if "--faces" in flags:
        args += ["--distill-dir", str(tmp_path / "d")]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_reliability_and_gate_curves_are_measured_on_the_people_the_fit_left_out():
    data, z, info = synthetic_set()
    rows = np.arange(len(data["photo"]))
    check = rows[np.isin(data["identity"], [f"person_{p:03d}" for p in range(10)])]
    scale = sc.fit_scale(data, rows, z, info, check_rows=check)
    rel = scale["reliability"]
    assert rel["how"].startswith("on 10 people the student never learnt from (90 faces)") and "other 30" in rel["how"]
    assert rel["dlib"]["own"]["faces"] == 90 and rel["dlib"]["own"]["mean_abs_error"] < 0.03
    assert scale["gate"]["people"] == 10 and scale["gate"]["faces"] == 90 and scale["gate"]["clean_faces"] == 30
    assert scale["fitted_on"]["faces"] == 360  # the map itself from everyone
