"""The compile report: Markdown + JSON + PNG plots (student vs teacher, score histograms, EDC per FR model)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from fiqa_compile.distill import SCORE_NAMES
from fiqa_sdk.json_safe import finite_or_null  # noqa: F401  (re-exported: compiler uses report.finite_or_null)


MIN_EDC_PEOPLE = 20  # below this, an FNMR is a handful of identities' luck, not a ranking's quality


def edc_caveat(people: int) -> str | None:
    """Why the report's EDC should not be read as evidence, or None: a certainty-ratio utility ranks how well a
    face will match *its own person against others*, which a few people cannot show (the default bundles are
    verified on 3 pip-shipped people, where even Laplacian sharpness or a random order can come out ahead)."""
    if people >= MIN_EDC_PEOPLE:
        return None
    return (f"Indicative only: these pairs come from {people} people (fewer than {MIN_EDC_PEOPLE}), so the curve "
            "reflects those few identities more than the ranking. Judge this bundle's utility score on many people: "
            "`fiqa-eval --faces DIR --split all --method bundle:BUNDLE_DIR --out OUT` on a folder of your own photos "
            "(several per person; `bench/eval_lfw.sh` does this for the default bundles on held-out LFW people).")


def dlib_embeddings(crops: np.ndarray, recognizer=None) -> np.ndarray:
    """dlib ResNet embeddings of aligned 112x112 crops (padded so dlib's chip has context).

    ``recognizer``: a ``create_recognizer("dlib")`` to reuse (one is made otherwise); raises
    :class:`~fiqa_compile.fr.FRModelUnavailable` when dlib or its model files are missing."""
    from fiqa_compile.fr import AlignedFace, create_recognizer

    fr = recognizer if recognizer is not None else create_recognizer("dlib")
    pad = 40
    box = np.array([pad + 8, pad + 8, pad + 104, pad + 112], np.float32)
    faces = []
    for c in crops:
        img = cv2.copyMakeBorder(c, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        faces.append(AlignedFace(c, img, fr.dlib.landmarks68(img, box)))
    return fr.embed_faces(faces)


# How the report feeds each FR model the verification crops (the faces have no frame around them).
EDC_FR_INPUT = {
    "dlib": "the crop padded by 40 px (edge pixels repeated) so dlib's 150x150 chip has context; dlib's 68 "
            "landmarks found in it",
    "mobilefacenet": "the 112x112 crop as is",
}


def edc_plot_name(fr_name: str) -> str:
    """plots/edc.png is dlib's (as in reports before there were two FR models); plots/edc_<model>.png the others'."""
    return "plots/edc.png" if fr_name == "dlib" else f"plots/edc_{fr_name}.png"


def fr_title(fr_name: str) -> str:
    from fiqa_compile import fr

    cls = {"dlib": fr.DlibResNet, "mobilefacenet": fr.MobileFaceNet}.get(fr_name)
    return cls.title if cls is not None else fr_name


def unavailable_reason(fr_name: str, error: Exception) -> str:
    """Why ``fr_name`` could not be built, with how to get MobileFaceNet's file when the message does not say."""
    reason = str(error).strip() or type(error).__name__
    if fr_name == "mobilefacenet" and "get_mobilefacenet.sh" not in reason:
        reason += "; its model file comes from `bash scripts/get_mobilefacenet.sh`"
    return reason


def fr_embeddings(fr_name: str, crops: np.ndarray) -> tuple[np.ndarray, dict]:
    """Unit embeddings of the verification crops under ``fr_name`` and that model's description.

    dlib as always here (the padded crop, see :func:`dlib_embeddings`); a crop-only model (MobileFaceNet) from the
    crops directly. Raises :class:`~fiqa_compile.fr.FRModelUnavailable` when the model is missing."""
    from fiqa_compile.fr import AlignedFace, create_recognizer

    fr = create_recognizer(fr_name)
    try:
        if fr_name == "dlib":
            emb = dlib_embeddings(crops, fr)
        elif fr.crop_only:
            emb = fr.embed_faces([AlignedFace(np.ascontiguousarray(c)) for c in crops])
        else:
            raise ValueError(f"the report has no way to embed bare crops with {fr_name!r} (not crop-only)")
        return np.asarray(emb, np.float32), fr.describe()
    finally:
        fr.close()


def edc_curves(verify, qualities: dict[str, np.ndarray], fmr: float = 1e-2,
               fr_models: tuple[str, ...] | None = None) -> tuple[dict[str, dict], dict]:
    """EDC of each quality measure on all genuine / impostor pairs of the verification faces, under every FR model.

    Returns ``(curves, summary)``: ``curves[fr_name][quality_name]`` the EDC of each model that could be computed
    (each at its own threshold at ``fmr`` over all impostor pairs), and the report.json "edc" section::

        {"fmr", "genuine_pairs", "impostor_pairs", "people",
         "indicative_only": bool,              # present when some curve was computed (see edc_caveat)
         "methods": {...},                     # dlib's per-quality summaries, as before there were two models
                                               # ({} when dlib was not computed)
         "skipped": "...",                     # only when the pairs cannot make an EDC (no model computed)
         "models": {"dlib": {"status": "computed", "title", "model", "dim", "input", "plot": "plots/edc.png",
                             "methods": {...}},
                    "mobilefacenet": {"status": "unavailable", "title", "skipped": "<why; how to get it>"}}}

    A model's ``status`` is "computed", "unavailable" (its files or runtime are missing) or "not computed" (the
    pairs cannot make an EDC); the last two carry ``skipped``.
    """
    from fiqa_compile.eval.edc import edc
    from fiqa_compile.fr import FR_MODELS, FRModelUnavailable
    from fiqa_sdk.measures import laplacian_variance

    fr_models = tuple(FR_MODELS if fr_models is None else fr_models)
    iu = np.triu_indices(len(verify.crops), 1)
    same = verify.person[iu[0]] == verify.person[iu[1]]
    people = len(np.unique(verify.person))
    pairs = {"fmr": fmr, "genuine_pairs": int(same.sum()), "impostor_pairs": int((~same).sum()), "people": people}
    if not same.any() or same.all():
        why = (f"{len(verify.crops)} held-out faces of {people} people give {pairs['genuine_pairs']} genuine / "
               f"{pairs['impostor_pairs']} impostor pairs; an EDC needs both (give --faces more people, with "
               "several photos each)")
        models = {n: {"status": "not computed", "title": fr_title(n), "skipped": why} for n in fr_models}
        return {}, {**pairs, "methods": {}, "skipped": why, "models": models}
    qualities = dict(qualities)
    qualities["baseline: Laplacian sharpness"] = np.array([laplacian_variance(c) for c in verify.crops])
    qualities["baseline: random"] = np.random.default_rng(0).random(len(verify.crops))
    curves, models = {}, {}
    for fr_name in fr_models:
        try:
            emb, described = fr_embeddings(fr_name, verify.crops)
        except FRModelUnavailable as e:
            models[fr_name] = {"status": "unavailable", "title": fr_title(fr_name),
                               "skipped": unavailable_reason(fr_name, e)}
            continue
        sim = emb @ emb.T
        curves[fr_name], summary = {}, {}
        for name, q in qualities.items():
            pq = np.stack([q[iu[0]], q[iu[1]]], 1)
            c = edc(sim[iu][same], pq[same], sim[iu][~same], fmr=fmr)
            curves[fr_name][name] = c
            summary[name] = c.summary()
        models[fr_name] = {"status": "computed", "title": described.get("title", fr_title(fr_name)),
                           "model": described.get("model"), "dim": described.get("dim"),
                           "input": EDC_FR_INPUT.get(fr_name, described.get("input")),
                           "plot": edc_plot_name(fr_name), "methods": summary}
    out = {**pairs, "methods": models.get("dlib", {}).get("methods", {}), "models": models}
    if curves:
        out["indicative_only"] = edc_caveat(people) is not None
    return curves, out


def edc_markdown(curves: dict[str, dict], summary: dict) -> list[str]:
    """The report's error-versus-discard section: one table and plot per FR model, a line per skipped one."""
    lines = [f"## Error-versus-discard (FMR {summary['fmr']:g}; {summary['genuine_pairs']} genuine / "
             f"{summary['impostor_pairs']} impostor pairs)", ""]
    if "skipped" in summary:
        return lines + [f"Not computed: {summary['skipped']}.", ""]
    lines += ["Under each face-recognition model, the threshold sits at that FMR over all impostor pairs; the "
              "table's FNMR is over the genuine pairs left after discarding the lowest-quality ones.", ""]
    if curves and (caveat := edc_caveat(summary["people"])):
        lines += [f"*{caveat}*", ""]
    for fr_name, m in summary["models"].items():
        if m["status"] != "computed":
            lines += [f"### {m['title']}", "", f"Skipped ({m['status']}): {m['skipped']}", ""]
            continue
        lines += [f"### {m['title']} (`{m['model']}`, {m['dim']}-d; input: {m['input']})", "",
                  "| quality | pAUC@20% | pAUC@30% | FNMR at 0% discard |", "|---|---:|---:|---:|"]
        for name, c in curves[fr_name].items():
            lines.append(f"| {name} | {c.pauc[0.2]:.4f} | {c.pauc[0.3]:.4f} | {c.errors[0]:.4f} |")
        lines += ["", f"![EDC, {m['title']}]({m['plot']})", ""]
    return lines


def plot_edcs(curves: dict[str, dict], summary: dict, files: Path) -> list[Path]:
    """plots/edc.png (dlib) and plots/edc_<model>.png (the others) for each FR model computed."""
    from fiqa_compile.eval.plots import plot_edc

    written = []
    for fr_name, per_quality in curves.items():
        m = summary["models"][fr_name]
        written.append(plot_edc(per_quality, files / m["plot"], limit=0.3,
                                title=f"EDC ({m['title']} FR, FMR {summary['fmr']:g}) on the held-out faces"))
    return written


# Printed by the compile and written into its report when no --calibration folder was given (measured by
# bench/eval_student.py on 3,519 held-out LFW crops; README "Calibration").
DEFAULT_CALIBRATION_ADVICE = (
    "Calibrated on the pip-shipped group photo (6 small faces), the fallback without --calibration. With the "
    "student's output range pinned it holds up on unseen LFW people (INT8 vs fp32 SRCC utility / perceptual: "
    "TFLite 0.9995 / 0.9977, Q/DQ ONNX 0.9996 / 0.9977; calibrated on LFW photos 0.9997 / 0.9977 and "
    "0.9996 / 0.9979), but photos like your captures are the safer set: pass --calibration DIR with a few hundred.")


def used_methods(asked: str, record: dict | None) -> str:
    """'entropy ranges (chosen by auto)' for the Q/DQ model; the TFLite converter's own observers otherwise."""
    parts = []
    if record and "onnx_qdq" in record:
        parts.append(f"Q/DQ ONNX {record['onnx_qdq']['method']} ranges" + (" (chosen by auto)" if asked == "auto" else ""))
    if record and "tflite_int8" in record:
        parts.append("TFLite PT2E histogram-observer ranges")
    return ", ".join(parts) or "no INT8 artifact"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _num(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def reliability_plot_name(fr_name: str) -> str:
    return f"plots/reliability_{fr_name}.png"


def plot_reliabilities(scale: dict | None, files: Path) -> list[Path]:
    """plots/reliability_<model>.png per FR model of a calibrated scale: the utility scale and the model's own map,
    predicted vs observed (the fit's out-of-fold diagrams)."""
    if not scale or "reliability" not in scale:
        return []
    from fiqa_compile.eval.plots import plot_reliability

    rel = scale["reliability"]
    out = []
    for fr in scale["fr_models"]:
        if fr not in rel:
            continue
        out.append(plot_reliability({"utility scale (both FR models' mean)": rel[fr]["scale"],
                                     f"{fr}'s own map": rel[fr]["own"]}, files / reliability_plot_name(fr),
                                    title=f"Reliability under {fr_title(fr)}, people the fit left out"))
    return out


def scale_markdown(scales: dict | None, scale: dict | None) -> list[str]:
    """The report's "what the scores mean" section: each score's scale in words, and for a calibrated utility
    scale its reliability per FR model (the fit's out-of-fold diagrams)."""
    if not scales:
        return []
    from fiqa_sdk.bundle import ScaleSpec

    lines = ["## What the scores mean", ""]
    for name, section in scales.items():
        spec = ScaleSpec.from_dict(section)
        lines += [f"**{name}** ({spec.summary()}): {section['meaning']}.", ""]
    if not scale or "reliability" not in scale:
        return lines
    fit = scale.get("fitted_on", {})
    rel = scale["reliability"]
    lines += [f"The utility scale was fitted by `{scale.get('command', 'python -m fiqa_compile.scale')}` on "
              f"{', '.join(map(str, fit.get('frames', ['?'])))} ({fit.get('people_rule', '')}): "
              f"{fit.get('faces', '?')} faces of {fit.get('people', '?')} people, {fit.get('comparisons', '?')} "
              f"genuine comparisons, thresholds at FMR {scale['fmr']:g} "
              + ", ".join(f"{k} {v:.4f}" for k, v in fit.get("thresholds", {}).items())
              + f". Reliability {rel['how']}; mean |predicted - observed| over the 10 bins (count-weighted: ECE):", "",
              "| FR model | utility scale | the model's own map | observed success |", "|---|---:|---:|---:|"]
    for fr in scale["fr_models"]:
        r = rel.get(fr)
        if r is None:
            continue
        lines.append(f"| {fr_title(fr)} | {_num(r['scale']['mean_abs_error'], 3)} (ECE {_num(r['scale']['ece'], 3)}) | "
                     f"{_num(r['own']['mean_abs_error'], 3)} (ECE {_num(r['own']['ece'], 3)}) | "
                     f"{_pct(fit.get('observed_success', {}).get(fr))} |")
    lines += ["", "The utility score is the mean over the FR models, so it is exact for neither when they differ; "
              "each model's own map is in the manifest (`per_fr_model`; "
              "`bundle.score('utility').scale.apply(z, fr_model=...)`).", "",
              "| predicted | faces | " + " | ".join(f"observed, {fr}" for fr in scale["fr_models"]) + " |",
              "|---|---:|" + "---:|" * len(scale["fr_models"])]
    for i, b in enumerate(rel["average"]["scale"]["bins"]):
        if b["n"]:
            lines.append(f"| {b['lo']:.1f}-{b['hi']:.1f} (mean {_num(b['predicted'], 3)}) | {b['n']} | " + " | ".join(
                _num(rel[fr]["scale"]["bins"][i]["observed"], 3) for fr in scale["fr_models"] if fr in rel) + " |")
    lines.append("")
    lines += [f"![reliability, {fr_title(fr)}]({reliability_plot_name(fr)})" for fr in scale["fr_models"] if fr in rel]
    return lines + [""]


def gate_markdown(thresholds: dict, choice: dict | None, scale: dict | None) -> list[str]:
    """The report's gate section: the thresholds, how they were chosen, and for a calibrated scale what other
    utility thresholds would give (clean-face rejection, FNMR of kept pairs)."""
    lines = ["## Gate thresholds (0-100)", ""]
    choice = choice or {"how": "youden"}
    if choice["how"] == "target" and scale is not None:
        from fiqa_compile.scale import gate_table

        e = choice["expected"]
        gate = scale["gate"]
        lines += [f"From the deployment target `{choice['target']}`"
                  + (" (fiqa-compile's default; `--gate-target` sets another)" if choice.get("default_target") else "")
                  + f" on the utility scale's gate curves ({gate['faces']} faces, {gate['clean_faces']} of them "
                  f"undegraded, of {gate.get('people', '?')} people the student never learnt from; "
                  f"{gate['genuine_pairs']} genuine photo pairs, side b degraded in {gate['genuine_pairs_degraded']}): "
                  f"utility_accept {e['utility_accept']:g} is expected to make the gate reject "
                  f"{_pct(e['reject_clean_gate'])} of undegraded captures (the score checks alone "
                  f"{_pct(e['reject_clean'])}; the rest its default size, pose, exposure and sharpness checks) and "
                  f"the score checks {_pct(e['reject_all'])} of all faces; among genuine pairs whose two faces are "
                  f"kept the FNMR at FMR 1e-3 is (an estimate from {gate['genuine_pairs']} pairs) "
                  + ", ".join(f"{fr} {_num(v)} (all pairs {_num(e['fnmr_all'].get(fr))})" for fr, v in e["fnmr_kept"].items())
                  + f". {gate['perceptual_rule']} ({gate['perceptual_accept']:g}). Release 10 points below accept "
                  "(hysteresis).", "",
                  "| utility_accept | undegraded rejected (score checks) | by the gate (default checks) | all faces "
                  "rejected (score checks) | genuine pairs kept | " + " | ".join(f"FNMR kept, {fr}" for fr in gate["fnmr_kept"]) + " |",
                  "|---:|---:|---:|---:|---:|" + "---:|" * len(gate["fnmr_kept"])]
        dense = tuple(float(t) for t in range(85, 100))  # undegraded faces crowd the top of the scale
        for row in gate_table(scale, 10, extra=(e["utility_accept"], *dense)):
            mark = "**" if row["utility_accept"] == e["utility_accept"] else ""
            lines.append(f"| {mark}{row['utility_accept']:g}{mark} | {_pct(row['reject_clean'])} | "
                         f"{_pct(row['reject_clean_gate'])} | {_pct(row['reject_all'])} | {_pct(row['pairs_kept'])} | "
                         + " | ".join(_num(v) for v in row["fnmr_kept"].values()) + " |")
        lines.append("")
    else:
        lines += ["Accept where clean and heavily degraded (severity >= 0.7) held-out faces separate best "
                  "(Youden's J); release 10 points lower (hysteresis). The utility scale is uncalibrated, so these "
                  "are a starting point: set your own with `--gate` here or when the site runs.", ""]
    if choice.get("overrides"):
        lines += [f"Set by hand afterwards: `{' '.join('--gate ' + o for o in choice['overrides'])}`.", ""]
    return lines + ["```json", json.dumps(thresholds, indent=2), "```", ""]


def write_report(files: Path, *, target, verify, teacher_scores, student_scale, outputs, verification, stages,
                 student_origin, thresholds, opts, calib, calibration_record: dict | None = None,
                 scale: dict | None = None, gate_choice: dict | None = None,
                 scales: dict | None = None) -> list[Path]:
    from fiqa_compile.eval.plots import plot_histograms, plot_scatter

    plots = files / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    for i, n in enumerate(SCORE_NAMES):
        written.append(plot_scatter(student_scale[:, i], teacher_scores[:, i], plots / f"scatter_{n}.png",
                                    xlabel=f"student fp32 ({n})", ylabel=f"teacher ({n})",
                                    title=f"{n}: student vs teacher on {len(verify.crops)} held-out faces"))
        hist = {"teacher": teacher_scores[:, i], "student fp32": student_scale[:, i]}
        hist.update({k: v[:, i] for k, v in outputs.items()})
        written.append(plot_histograms(hist, plots / f"hist_{n}.png", xlabel=f"{n} (teacher scale)",
                                       title=f"{n} score distributions"))
    qualities = {"student utility (fp32)": student_scale[:, 0], "teacher utility": teacher_scores[:, 0]}
    qualities.update({f"{k} utility": v[:, 0] for k, v in outputs.items()})
    curves, edc_summary = edc_curves(verify, qualities)
    written += plot_edcs(curves, edc_summary, files)
    written += plot_reliabilities(scale, files)
    data = {"target": target.name, "target_description": target.description, "student": student_origin,
            "verification_faces": {"n": int(len(verify.crops)), "source": verify.source,
                                   "people": int(len(np.unique(verify.person)))},
            "calibration": {"n": len(calib), "strata": calib.strata(), "method": opts.calibration_method,
                            **(calibration_record or {})},
            "mirror_average": bool(getattr(opts, "mirror_average", False)),
            "stages": stages, "verification": verification, "thresholds": thresholds, "edc": edc_summary,
            "gate_choice": gate_choice, "scales": scales,
            "scale_fit": {k: scale[k] for k in ("fitted_on", "reliability", "gate", "command") if k in scale}
            if scale else None}
    # strict JSON: an undefined statistic (NaN) is null, which every JSON reader takes
    (files / "report.json").write_text(json.dumps(finite_or_null(data), indent=2, allow_nan=False))
    written.append(files / "report.json")
    lines = [f"# fiqa-sdk bundle report: `{target.name}`", "", target.description, "",
             f"**Student:** {student_origin}", "",
             f"**Verification:** {len(verify.crops)} held-out faces of {data['verification_faces']['people']} people "
             f"({verify.source}). **Calibration:** {len(calib)} faces, {len(calib.strata())} strata, "
             f"{used_methods(opts.calibration_method, calibration_record)}. **Utility teacher:** the mean of its 10 test-time views (the "
             "face and its mirror, as is and shifted 2 px four ways; one view is not repeatable at that scale). "
             + ("**Student scores:** the mean over each face and its mirror image (two passes; `mirror_average`)."
                if data["mirror_average"] else "**Student scores:** one pass per face (`--no-mirror-average`)."), ""]
    if opts.calibration is None:
        lines += [f"> {DEFAULT_CALIBRATION_ADVICE}", ""]
    lines += ["## Stages", "", "| stage | seconds | result |", "|---|---:|---|"]
    lines += [f"| {r['stage']} | {r['seconds']} | {r['result']} |" for r in stages]
    lines += ["", "## Agreement (SRCC / PLCC after logistic fit / MAE)", "",
              "| artifact | backend | vs fp32 utility | vs fp32 perceptual | vs teacher utility | vs teacher perceptual |",
              "|---|---|---|---|---|---|"]
    for name, v in verification.items():
        def cell(d, n):
            return f"{d[n]['srcc']:.4f} / {d[n].get('plcc_fit', d[n]['plcc']):.4f} / {d[n]['mae']:.3g}"
        fp = [cell(v["vs_fp32"], n) if "vs_fp32" in v else "-" for n in SCORE_NAMES]
        te = [cell(v["vs_teacher"], n) for n in SCORE_NAMES]
        lines.append(f"| {name} | {v.get('backend', 'torch')} | {fp[0]} | {fp[1]} | {te[0]} | {te[1]} |")
    lines += ["", *edc_markdown(curves, edc_summary)]
    lines += scale_markdown(scales, scale)
    lines += gate_markdown(thresholds, gate_choice, scale)
    lines += [f"![{n} scatter](plots/scatter_{n}.png)" for n in SCORE_NAMES]
    (files / "report.md").write_text("\n".join(lines) + "\n")
    written.append(files / "report.md")
    return written
