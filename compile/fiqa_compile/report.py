"""The compile report: Markdown + JSON + PNG plots (student vs teacher, score histograms, EDC)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from fiqa_compile.distill import SCORE_NAMES
from fiqa_sdk.json_safe import finite_or_null  # noqa: F401  (re-exported: compiler uses report.finite_or_null)


def dlib_embeddings(crops: np.ndarray) -> np.ndarray:
    """dlib ResNet embeddings of aligned 112x112 crops (padded so dlib's chip has context)."""
    from fiqa_compile.fr.dlib_fr import DlibFaceRecognizer

    fr = DlibFaceRecognizer()
    pad = 40
    box = np.array([pad + 8, pad + 8, pad + 104, pad + 112], np.float32)
    out = []
    for c in crops:
        img = cv2.copyMakeBorder(c, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        out.append(fr.embed(img, fr.landmarks68(img, box)))
    return np.stack(out)


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


def edc_curves(verify, qualities: dict[str, np.ndarray], fmr: float = 1e-2) -> tuple[dict, dict]:
    """EDC of each quality measure on all genuine / impostor pairs of the verification faces (dlib FR)."""
    from fiqa_compile.eval.edc import edc
    from fiqa_sdk.measures import laplacian_variance

    iu = np.triu_indices(len(verify.crops), 1)
    same = verify.person[iu[0]] == verify.person[iu[1]]
    people = len(np.unique(verify.person))
    pairs = {"fmr": fmr, "genuine_pairs": int(same.sum()), "impostor_pairs": int((~same).sum()), "people": people}
    if not same.any() or same.all():
        return {}, {**pairs, "methods": {}, "skipped": f"{len(verify.crops)} held-out faces of {people} people give "
                    f"{pairs['genuine_pairs']} genuine / {pairs['impostor_pairs']} impostor pairs; an EDC needs "
                    "both (give --faces more people, with several photos each)"}
    emb = dlib_embeddings(verify.crops)
    sim = emb @ emb.T
    qualities = dict(qualities)
    qualities["baseline: Laplacian sharpness"] = np.array([laplacian_variance(c) for c in verify.crops])
    qualities["baseline: random"] = np.random.default_rng(0).random(len(emb))
    curves, summary = {}, {}
    for name, q in qualities.items():
        pq = np.stack([q[iu[0]], q[iu[1]]], 1)
        c = edc(sim[iu][same], pq[same], sim[iu][~same], fmr=fmr)
        curves[name] = c
        summary[name] = c.summary()
    return curves, {**pairs, "indicative_only": edc_caveat(people) is not None, "methods": summary}


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


def write_report(files: Path, *, target, verify, teacher_scores, student_scale, outputs, verification, stages,
                 student_origin, thresholds, opts, calib, calibration_record: dict | None = None) -> list[Path]:
    from fiqa_compile.eval.plots import plot_edc, plot_histograms, plot_scatter

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
    if curves:
        written.append(plot_edc(curves, plots / "edc.png", limit=0.3,
                                title=f"EDC (dlib FR, FMR {edc_summary['fmr']:g}) on the held-out faces"))
    data = {"target": target.name, "target_description": target.description, "student": student_origin,
            "verification_faces": {"n": int(len(verify.crops)), "source": verify.source,
                                   "people": int(len(np.unique(verify.person)))},
            "calibration": {"n": len(calib), "strata": calib.strata(), "method": opts.calibration_method,
                            **(calibration_record or {})},
            "mirror_average": bool(getattr(opts, "mirror_average", False)),
            "stages": stages, "verification": verification, "thresholds": thresholds, "edc": edc_summary}
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
    lines += ["", f"## Error-versus-discard (dlib FR, FMR {edc_summary['fmr']:g}; "
              f"{edc_summary['genuine_pairs']} genuine / {edc_summary['impostor_pairs']} impostor pairs)", "",
              "| quality | pAUC@20% | pAUC@30% | FNMR at 0% discard |", "|---|---:|---:|---:|"]
    for name, c in curves.items():
        lines.append(f"| {name} | {c.pauc[0.2]:.4f} | {c.pauc[0.3]:.4f} | {c.errors[0]:.4f} |")
    if curves and (caveat := edc_caveat(edc_summary["people"])):
        lines += ["", f"*{caveat}*"]
    lines += ["", "![EDC](plots/edc.png)" if curves else f"Not computed: {edc_summary['skipped']}.", "",
              "## Gate thresholds (0-100)", "",
              "Accept where clean and heavily degraded (severity >= 0.7) held-out faces separate best "
              "(Youden's J); release 10 points lower (hysteresis).", "", "```json", json.dumps(thresholds, indent=2),
              "```", ""]
    lines += [f"![{n} scatter](plots/scatter_{n}.png)" for n in SCORE_NAMES]
    (files / "report.md").write_text("\n".join(lines) + "\n")
    written.append(files / "report.md")
    return written
