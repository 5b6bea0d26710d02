"""The calibrated utility scale on people no model was fitted on: is "utility 90" right, and what do the thresholds do?

    python bench/utility_scale.py                 # needs runs/frames/heldout-eval (bench/recognition_utility.py)

On the held-out people of lfw-dev (``fiqa_calibration.held_out_people``: never used for labels, teachers, students,
calibration or the scale's fit), every photo clean and degraded in the frame once per damage family, detected and
aligned as the device does (``runs/frames/heldout-eval``). The default bundle scores every face as a device does
(INT8, ``fiqa_sdk.Scorer``). Three measurements:

1. **Calibration**: each face's outcome by the scale's own protocol (``fiqa_compile.scale.face_outcomes``: the share
   of its comparisons with the person's other clean photos that match at FMR 1e-3), per FR model; mean
   |predicted - observed| over 10 bins of the prediction (the plain mean over the non-empty bins; the count-weighted
   one, ECE, beside it), for the utility scale (the mean over both FR models) and for each model's own map.
   Target: at most 0.05 for each FR model.
2. **Acceptance** of the undegraded photos with the default thresholds: by the capture gate's per-photo verdict
   (``CaptureGate.assess``, what ``fiqa-score`` says: the score checks and the default size, frame-edge, pose,
   exposure and sharpness checks), and by the score checks alone. Target: at least 85 %.
3. **FNMR at FMR 1e-3** among the genuine pairs whose two faces are both accepted (by the gate; by the score checks
   alone beside it), against all genuine pairs: the comparisons of ``bench/recognition_utility.py`` (every
   within-person photo pair, at most 30 a person, side b degraded in half of them, five seeded pairings averaged;
   the threshold at FMR 1e-3 over all impostor pairs). Target: at most half, per FR model.

A bundle built before the scale existed (no ``scale`` in its manifest), or any bundle with ``--scale student``, is
scored all the same, with the embedded student's ``student.json`` scale applied to its raw outputs and the
thresholds ``fiqa-compile`` would choose (``--gate-target`` default), when the bundle was compiled from those
student weights; the results say which.
Writes ``results/utility_scale.json`` / ``.md`` / ``_reliability.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_basics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
FMR = 1e-3
TARGETS = {"calibration": 0.05, "acceptance": 0.85, "fnmr_ratio": 0.5}


def scorer_outputs(bundle_dir: Path, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    """(0-100 scores [N, 2], raw outputs [N, 2] in utility/perceptual order, the bundle) as a device scores them."""
    from fiqa_sdk import Scorer

    with Scorer(bundle_dir, detector=None, max_batch=64) as scorer:
        batch = scorer.score(crops)
        return batch.scores, batch.z, scorer.bundle


def scale_for(bundle, student_dir: Path, which: str = "bundle", target: str | None = None) -> tuple[dict, dict, str]:
    """(scale record, thresholds, where they come from): the bundle's own, or (``which`` "student", or a bundle that
    predates the scale) the student's with the thresholds fiqa-compile would choose from it."""
    from fiqa_compile.scale import DEFAULT_GATE_TARGET, GateTarget, thresholds_for_target

    info = json.loads((student_dir / "student.json").read_text())
    scale = info.get("scale")
    spec = bundle.score("utility")
    if spec.calibrated and which == "bundle":
        record = {**spec.scale.to_dict(), **({k: scale[k] for k in ("gate", "reliability") if k in scale}
                                            if scale and scale.get("x") == list(spec.scale.x) else {})}
        return record, dict(bundle.thresholds), f"the bundle's own scale and thresholds ({bundle.path})"
    if scale is None:
        raise SystemExit(f"utility_scale: {bundle.path} has no calibrated scale and {student_dir} records none; fit "
                         "one: python -m fiqa_compile.scale --frames runs/frames/train")
    if bundle.provenance.get("student_sha256") != info["sha256"]:
        raise SystemExit(f"utility_scale: {bundle.path} was compiled from other student weights than "
                         f"{student_dir}; rebuild the bundle (scripts/make_defaults.sh) or pass --bundle")
    thresholds, _ = thresholds_for_target(scale, GateTarget.parse(target or DEFAULT_GATE_TARGET))
    why = "predates the scale" if not spec.calibrated else "was compiled from the same weights"
    whose = f"--gate-target {target}" if target else f"fiqa-compile's default --gate-target {DEFAULT_GATE_TARGET}"
    return scale, thresholds, (f"{bundle.path} {why}: its INT8 raw outputs through the scale of "
                               f"{student_dir}/student.json, thresholds from {whose}")


def frame_shapes(data: dict, faces: Path | None) -> dict[int, tuple[int, int]]:
    """Photo index -> (height, width) of its frame, read from the face folder (for the gate's frame-edge check)."""
    import cv2

    if faces is None or not faces.is_dir():
        return {}
    from fiqa_calibration import FaceFolder

    folder = FaceFolder(faces)
    out = {}
    for p in np.unique(data["photo"]):
        img = cv2.imread(str(folder[int(p)][0]), cv2.IMREAD_COLOR)
        if img is not None:
            out[int(p)] = img.shape[:2]
    return out


def gate_verdicts(data: dict, rows: np.ndarray, scores: np.ndarray, thresholds: dict,
                  shapes: dict[int, tuple[int, int]]) -> tuple[np.ndarray, dict[str, int]]:
    """The capture gate's per-photo verdict (``CaptureGate.assess``) on each row, and the reasons' counts."""
    from fiqa_sdk.gate import CaptureGate, FaceObservation, GateConfig
    from fiqa_sdk.measures import image_measures, landmark_measures
    from fiqa_sdk.pipeline import outside_fraction

    gate = CaptureGate(GateConfig.from_manifest({"thresholds": thresholds},
                                                **({} if shapes else {"max_outside_fraction": None})))
    accepted = np.zeros(len(rows), bool)
    reasons: dict[str, int] = {}
    for i, r in enumerate(rows):
        measures = image_measures(data["crop"][r])
        try:
            measures.update(landmark_measures(data["lm5"][r]))
        except ValueError:
            reasons["bad_landmarks"] = reasons.get("bad_landmarks", 0) + 1
            continue
        shape = shapes.get(int(data["photo"][r]))
        if shape is not None:
            measures["outside_fraction"] = outside_fraction(shape, data["lm5"][r])
        obs = FaceObservation(0, i, 0.0, None, None, {"utility": float(scores[i, 0]),
                                                      "perceptual": float(scores[i, 1])}, measures)
        d = gate.assess(obs)
        accepted[i] = d.accepted
        for reason in d.reasons:
            reasons[reason.value] = reasons.get(reason.value, 0) + 1
    return accepted, reasons


def fnmr_kept(samples, pairings, keep: np.ndarray) -> dict:
    """Per FR model: FNMR at FMR 1e-3 over all genuine pairs and over those whose two faces are kept (means over
    the pairings); ``keep`` is per sample row."""
    from fiqa_compile.eval.edc import similarity_threshold
    from fiqa_compile.eval.pairs import cosine_scores

    out = {}
    for fr in ("dlib", "mobilefacenet"):
        emb = samples.embeddings(fr)
        alls, kepts, cleans, clean_kepts, shares = [], [], [], [], []
        for p in pairings:
            s = cosine_scores(emb, p.a, p.b)
            thr = similarity_threshold(s[~p.genuine], FMR)
            g = p.genuine
            fail = s[g] < thr
            both = keep[p.a[g]] & keep[p.b[g]]
            clean = ~p.degraded[g]
            alls.append(fail.mean())
            kepts.append(fail[both].mean())
            cleans.append(fail[clean].mean())
            clean_kepts.append(fail[clean & both].mean())
            shares.append(both.mean())
        out[fr] = {"fnmr_all": float(np.mean(alls)), "fnmr_kept": float(np.mean(kepts)),
                   "ratio": float(np.mean(kepts) / np.mean(alls)), "pairs_kept": float(np.mean(shares)),
                   "clean_pairs": {"fnmr_all": float(np.mean(cleans)), "fnmr_kept": float(np.mean(clean_kepts))}}
    return out


def plot(record: dict, path: Path) -> Path:
    from fiqa_compile.eval.plots import plot_reliability

    curves = {}
    for fr in ("dlib", "mobilefacenet"):
        c = record["calibration"][fr]
        curves[f"{fr}: utility scale"] = c["scale"]
        curves[f"{fr}: its own map"] = c["own"]
    return plot_reliability(curves, path, title="Utility scale on held-out lfw-dev people (predicted vs observed)")


def fmt(x, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f} %" if pct else f"{x:.4f}"


def write_markdown(record: dict, path: Path) -> None:
    c, a, f = record["calibration"], record["acceptance"], record["fnmr"]
    s = record["set"]
    ok = lambda v: "**met**" if v else "**not met**"  # noqa: E731
    lines = ["# Utility scale: calibration, acceptance and FNMR on held-out people", "",
             f"Held-out lfw-dev people ({s['people']} people, {s['photos']} photos, each clean and degraded in the "
             f"frame once per damage family, detected and aligned as the device does). Scored with: "
             f"{record['scored_with']}. Thresholds: `{json.dumps(record['thresholds'])}`.", "",
             "## Calibration (target: mean |predicted - observed| over 10 bins <= "
             f"{TARGETS['calibration']} per FR model)", "",
             f"{c['faces']} probe faces of {c['people']} people with two or more photos, {c['comparisons']} genuine "
             f"comparisons with the person's other clean photos (the scale's own protocol); thresholds at FMR "
             f"{FMR:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in c["thresholds"].items()) + ".", "",
             "| FR model | utility scale: mean abs / ECE | its own map: mean abs / ECE | observed success | target |",
             "|---|---:|---:|---:|---|"]
    for fr in ("dlib", "mobilefacenet"):
        m = c[fr]
        lines.append(f"| {fr} | {fmt(m['scale']['mean_abs_error'])} / {fmt(m['scale']['ece'])} | "
                     f"{fmt(m['own']['mean_abs_error'])} / {fmt(m['own']['ece'])} | {fmt(m['observed'], True)} | "
                     f"{ok(m['meets_target'])} |")
    lines.append(f"| mean of both | {fmt(c['average']['mean_abs_error'])} / {fmt(c['average']['ece'])} | | "
                 f"{fmt(c['average_observed'], True)} | |")
    lines += ["", "The utility score is the mean over both FR models; dlib fails more often than MobileFaceNet at "
              "FMR 1e-3, so one number cannot be exact for both: each model's own map (`per_fr_model` in the "
              "manifest, `ScaleSpec.apply(z, fr_model=...)`) is what a site running only that model reads. "
              "The target is judged on the map for that FR model.", "",
              "| bin | n | predicted | observed dlib | observed MobileFaceNet | observed mean |", "|---|---:|---:|---:|---:|---:|"]
    for i, b in enumerate(c["average"]["bins"]):
        if not b["n"]:
            continue
        lines.append(f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['n']} | {fmt(b['predicted'])} | "
                     f"{fmt(c['dlib']['scale']['bins'][i]['observed'])} | "
                     f"{fmt(c['mobilefacenet']['scale']['bins'][i]['observed'])} | {fmt(b['observed'])} |")
    lines += ["", "![reliability](utility_scale_reliability.png)", "",
              f"## Acceptance of undegraded photos (target >= {TARGETS['acceptance']:.0%})", "",
              f"{a['photos']} undegraded photos ({a['detected']} with a face detected).", "",
              "| verdict by | accepted | target |", "|---|---:|---|",
              f"| the capture gate (CaptureGate.assess, as fiqa-score; default checks) | {fmt(a['gate'], True)} | "
              f"{ok(a['gate'] >= TARGETS['acceptance'])} |",
              f"| the score checks alone (utility >= {record['thresholds']['utility_accept']:g}, perceptual >= "
              f"{record['thresholds']['perceptual_accept']:g}) | {fmt(a['score_checks'], True)} | |", "",
              "Reasons the gate gave (a photo may have several): "
              + ", ".join(f"{k} {v}" for k, v in sorted(a["gate_reasons"].items(), key=lambda kv: -kv[1])) + ".",
              f" Expected from the fit's gate curves (training-side people the student never learnt from, no edge "
              f"check): the gate rejects {fmt(record['expected'].get('reject_clean_gate'), True)}, the score checks "
              f"{fmt(record['expected'].get('reject_clean'), True)}.", "",
              f"## FNMR at FMR {FMR:g}: genuine pairs whose two faces are accepted vs all (target <= "
              f"{TARGETS['fnmr_ratio']})", "",
              f"{record['pairs']['genuine']} genuine / {record['pairs']['impostor']} impostor comparisons per "
              f"pairing, side b degraded in half, {record['pairs']['pairings']} pairings averaged; accepted = the "
              "gate accepts both faces.", "",
              "| FR model | FNMR all | FNMR both accepted | ratio | pairs kept | clean pairs: all / accepted | target |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for fr in ("dlib", "mobilefacenet"):
        m = f["gate"][fr]
        lines.append(f"| {fr} | {fmt(m['fnmr_all'])} | {fmt(m['fnmr_kept'])} | {m['ratio']:.2f} | "
                     f"{fmt(m['pairs_kept'], True)} | {fmt(m['clean_pairs']['fnmr_all'])} / "
                     f"{fmt(m['clean_pairs']['fnmr_kept'])} | {ok(m['ratio'] <= TARGETS['fnmr_ratio'])} |")
    lines += ["", "With 'accepted' = both faces pass the score checks alone: " + ", ".join(
        f"{fr} {f['score_checks'][fr]['fnmr_kept']:.4f} vs {f['score_checks'][fr]['fnmr_all']:.4f} (ratio "
        f"{f['score_checks'][fr]['ratio']:.2f})" for fr in ("dlib", "mobilefacenet")) + ".", "",
        f"Machine: {record['machine']['cpu']}; {record['seconds']:.0f} s.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", type=Path, default=ROOT / "runs/frames/heldout-eval", help="held-out frame set")
    ap.add_argument("--bundle", type=Path, default=ROOT / "sdk/fiqa_sdk/bundles/default-android-arm64",
                    help="bundle to measure (default: the embedded android-arm64 one, INT8 TFLite)")
    ap.add_argument("--student", type=Path, default=ROOT / "compile/fiqa_compile/weights/student_mfn",
                    help="the student whose scale applies to a bundle built before the scale existed")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared/data/lfw-dev",
                    help="the photos the set was built from (frame sizes, for the gate's edge check)")
    ap.add_argument("--scale", choices=("bundle", "student"), default="bundle",
                    help="whose scale to measure: the bundle's own (default; the student's when the bundle has none), "
                         "or the --student's, applied to the bundle's raw outputs (a scale fitted since the bundle)")
    ap.add_argument("--gate-target", default=None, help="with the student's scale: thresholds from this target "
                    "instead of fiqa-compile's default (e.g. reject=0.15)")
    ap.add_argument("--seeds", type=int, default=5, help="pairings averaged (default 5)")
    ap.add_argument("--out", type=Path, default=RESULTS / "utility_scale", help="output stem")
    args = ap.parse_args(argv)

    from fiqa_compile.eval.pairs import build_pairs, impostors_for_fmr
    from fiqa_compile.labels.frame_set import load
    from fiqa_compile.scale import FR_MODELS, face_outcomes, reliability
    from fiqa_sdk.bundle import ScaleSpec
    from recognition_utility import Samples

    t0 = time.time()
    try:
        data = load(args.set)
    except FileNotFoundError as e:
        print(f"utility_scale: {e}", file=sys.stderr)
        return 2
    det = np.flatnonzero(data["detected"].astype(bool))
    scores_det, z_det, bundle = scorer_outputs(args.bundle, data["crop"][det])
    if args.gate_target is not None:
        args.scale = "student"
    scale, thresholds, scored_with = scale_for(bundle, args.student, args.scale, args.gate_target)
    spec = ScaleSpec.from_dict({k: scale[k] for k in ("kind", "meaning", "x", "y", "fr_models", "fmr",
                                                      "per_fr_model", "fitted_on") if k in scale})
    scores = np.full((len(data["photo"]), 2), np.nan)
    z = np.full((len(data["photo"]), 2), np.nan)
    scores[det], z[det] = scores_det, z_det
    scores[det, 0] = spec.apply(z_det[:, 0])  # the same as the bundle's own when it has the scale
    print(f"scored {len(det)} faces ({time.time() - t0:.0f} s); {scored_with}", file=sys.stderr, flush=True)

    # 1. calibration, by the scale's own protocol
    out = face_outcomes(data, det, FR_MODELS, FMR)
    pred = scores[out.rows, 0] / 100
    calibration = {"faces": int(len(out.rows)), "people": int(len(np.unique(out.identity))),
                   "comparisons": int(out.references.sum()), "thresholds": out.thresholds,
                   "average": reliability(pred, out.mean_success), "average_observed": float(out.mean_success.mean())}
    for k, fr in enumerate(FR_MODELS):
        own = spec.apply(z[out.rows, 0], fr_model=fr) / 100
        entry = {"scale": reliability(pred, out.success[:, k]), "own": reliability(own, out.success[:, k]),
                 "observed": float(out.success[:, k].mean())}
        entry["meets_target"] = bool(entry["own"]["mean_abs_error"] <= TARGETS["calibration"])
        calibration[fr] = entry

    # 2. acceptance of the undegraded photos
    clean = np.flatnonzero(data["version"] == 0)
    clean_det = clean[data["detected"][clean].astype(bool)]
    u_ok = scores[:, 0] >= thresholds["utility_accept"]
    p_ok = scores[:, 1] >= thresholds.get("perceptual_accept", 0) if thresholds.get("perceptual_accept") is not None \
        else np.ones(len(scores), bool)
    score_ok = u_ok & p_ok & np.isfinite(scores[:, 0])
    shapes = frame_shapes(data, args.faces)
    gate_ok_clean, reasons = gate_verdicts(data, clean_det, scores[clean_det], thresholds, shapes)
    acceptance = {"photos": int(len(clean)), "detected": int(len(clean_det)),
                  "score_checks": float(score_ok[clean_det].sum() / len(clean)),
                  "gate": float(gate_ok_clean.sum() / len(clean)), "gate_reasons": reasons,
                  "edge_check": bool(shapes)}

    # 3. FNMR of the accepted pairs, with the comparisons of bench/recognition_utility.py
    samples = Samples(data)
    keep_score = score_ok[data["detected"].astype(bool)]
    gate_all, _ = gate_verdicts(data, det, scores[det], thresholds, shapes)
    pairings = [build_pairs(samples, n_impostors=impostors_for_fmr(FMR), degraded_share=0.5,
                            max_genuine_per_identity=30, seed=seed) for seed in range(args.seeds)]
    fnmr = {"score_checks": fnmr_kept(samples, pairings, keep_score), "gate": fnmr_kept(samples, pairings, gate_all)}

    expected = {}  # what the fit's gate curves (training-side people) predicted at these thresholds
    if scale.get("gate"):
        grid = scale["gate"]["thresholds"]
        i = int(np.argmin([abs(g - thresholds["utility_accept"]) for g in grid]))
        expected = {"utility_accept": grid[i], "reject_clean": scale["gate"]["reject_clean"][i],
                    "reject_clean_gate": scale["gate"]["reject_clean_gate"][i],
                    "fnmr_kept": {m: c[i] for m, c in scale["gate"]["fnmr_kept"].items()},
                    "fnmr_all": scale["gate"]["fnmr_all"]}
    p0 = pairings[0]
    record = {"set": {"path": str(args.set), "faces": int(len(det)), "photos": int(len(clean)),
                      "people": int(len(np.unique(data["identity"])))},
              "bundle": str(args.bundle), "bundle_id": bundle.bundle_id, "scored_with": scored_with,
              "thresholds": thresholds, "fmr": FMR, "targets": TARGETS, "calibration": calibration,
              "acceptance": acceptance, "fnmr": fnmr, "expected": expected,
              "pairs": {"genuine": int(p0.genuine.sum()), "impostor": int((~p0.genuine).sum()),
                        "pairings": args.seeds},
              "scale_fitted_on": spec.fitted_on, "machine": machine_basics()}
    record["met"] = {"calibration": all(calibration[fr]["meets_target"] for fr in FR_MODELS),
                     "acceptance": acceptance["gate"] >= TARGETS["acceptance"],
                     "fnmr_ratio": {fr: fnmr["gate"][fr]["ratio"] <= TARGETS["fnmr_ratio"] for fr in FR_MODELS}}
    record["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from fiqa_sdk.json_safe import finite_or_null
    args.out.with_suffix(".json").write_text(json.dumps(finite_or_null(record), indent=2))
    plot(record, args.out.parent / f"{args.out.name}_reliability.png")
    write_markdown(record, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
