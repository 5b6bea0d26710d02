"""Issue #4's acceptance numbers for the trained teachers, all on identities they never trained on.

    python bench/eval_teachers.py --labels runs/labels/lfw-dev \\
        --utility compile/fiqa_compile/weights/vit_fiqa_mini --perceptual compile/fiqa_compile/weights/dsl_fiqa_tiny

(a) Agreement with their own labels on the held-out identities (``LabelSet.split(0.15, seed=0)``, the split
    fiqa-train holds out): utility teacher vs the certainty ratio ``cr``, perceptual teacher vs the pseudo-MOS.
(b) Severity ladders on unseen faces: each held-out clean crop is degraded with ``degrade(crop, kind, s, seed)``
    for s = 0, .2, .4, .6, .8, 1 (one seed per face, so the ladder degrades the same way, only harder). Per
    degradation type: Spearman between severity and score, pooled over faces and per face (averaged), and the
    share of faces whose score never rises along the ladder. Good teachers: strongly negative, shares near 1.
(c) EDC with dlib on cross-quality pairs of the held-out identities (half of the pairs with one degraded side,
    from the label set's degraded versions), threshold fixed at 0% discard for FMR 1e-2, pair quality = min,
    step-wise pAUC up to 20% discard: utility teacher, perceptual teacher, Laplacian sharpness, random order
    (mean over seeds) and the theoretical best.

Writes ``teachers_eval.json``, ``teachers_eval.md`` and ``teachers_edc.png`` into ``--out`` (bench/results).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when loaded by path
from common import machine_basics  # noqa: E402

from fiqa_calibration.degradations import DEGRADATION_TYPES, degrade
from fiqa_compile.eval.cli import evaluate_qualities, format_table
from fiqa_compile.eval.metrics import correlation_report, srcc
from fiqa_compile.eval.pairs import HELD_OUT, SPLIT_SEED, build_pairs, held_out_rows, impostors_for_fmr
from fiqa_compile.eval.scorers import SampleView, random_quality, sharpness
from fiqa_sdk.json_safe import finite_or_null

RESULTS = Path(__file__).resolve().parent / "results"
SEVERITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def machine() -> dict:
    import torch

    return {**machine_basics(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def load_teachers(utility: Path, perceptual: Path):
    from fiqa_compile.teachers import load_teacher

    out = {}
    for task, path in (("utility", utility), ("perceptual", perceptual)):
        t = load_teacher(path)
        if t.task != task:
            raise SystemExit(f"eval_teachers: --{task} {path} holds a {t.task} teacher; pass the {task} teacher's "
                             f"run directory (fiqa-train {task} ... --out DIR)")
        out[task] = t
    return out


def _finite_report(pred: np.ndarray, target: np.ndarray) -> dict:
    keep = np.isfinite(target)
    rep = correlation_report(pred[keep], target[keep])
    rep["n_undefined_labels"] = int((~keep).sum())
    return rep


def label_agreement(teachers: dict, scores: dict, labels, held: np.ndarray) -> dict:
    """(a): each teacher vs its own label, on all held-out rows (clean and degraded) and on each part."""
    own = {"utility": labels.cr[held].astype(np.float64), "perceptual": labels.mos[held].astype(np.float64)}
    clean = labels.version[held] == 0
    out = {}
    for task in ("utility", "perceptual"):
        s, y = scores[task], own[task]
        entry = {"label": "cr" if task == "utility" else "mos", "all": _finite_report(s, y)}
        for part, m in (("clean", clean), ("degraded", ~clean)):
            defined = y[m & np.isfinite(y)]
            if len(defined) >= 3 and np.ptp(defined) > 0:  # a constant label (clean MOS = 100) ranks nothing
                entry[part] = _finite_report(s[m], y[m])
        other = own["perceptual" if task == "utility" else "utility"]
        keep = np.isfinite(other)
        entry["srcc_vs_other_label"] = srcc(s[keep], other[keep]) if keep.sum() >= 3 else math.nan
        out[task] = entry
    return out


def severity_ladders(teachers: dict, labels, faces: np.ndarray, kinds: list[str], severities: tuple[float, ...],
                     batch_size: int) -> dict:
    """(b): per degradation type, how each teacher's score follows the severity on the same faces."""
    out = {}
    sev = np.asarray(severities, np.float64)
    for kind in kinds:
        t0 = time.perf_counter()
        crops = np.stack([degrade(labels.crop[r], kind, s, seed=int(r)) for r in faces for s in severities])
        lm = np.repeat(labels.lm68[faces], len(severities), axis=0)  # degradations do not move the face
        entry: dict = {}
        for task, teacher in teachers.items():
            q = teacher.score(crops, lm, batch_size=batch_size).reshape(len(faces), len(severities))
            per_face = [srcc(sev, row) for row in q]
            defined = [v for v in per_face if not math.isnan(v)]
            entry[task] = {
                "srcc_pooled": srcc(np.tile(sev, len(faces)), q.reshape(-1)),
                "srcc_per_face_mean": float(np.mean(defined)) if defined else math.nan,
                "faces_with_constant_score": len(per_face) - len(defined),
                "monotonic_share": float(np.mean(np.all(np.diff(q, axis=1) <= 0, axis=1))),
                "mean_score_by_severity": [float(v) for v in q.mean(0)],
            }
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        out[kind] = entry
        cells = [f"{t}: SRCC {entry[t]['srcc_pooled']:+.3f} mono {entry[t]['monotonic_share']:.2f}" for t in teachers]
        print(f"  {kind:15s} " + "  ".join(cells), flush=True)
    return out


def edc_comparison(teachers: dict, scores: dict, labels, held: np.ndarray, args: argparse.Namespace, png: Path):
    """(c): EDC of the teachers and the baselines on the same cross-quality pairs, one fixed threshold."""
    from fiqa_compile.eval.plots import plot_edc

    n_imp = args.impostors or impostors_for_fmr(args.fmr)
    pairs = build_pairs(labels, held, n_impostors=n_imp, degraded_share=args.degraded_share,
                        max_genuine_per_identity=args.max_genuine_per_identity or None, seed=args.seed)
    used = pairs.rows
    n = len(labels)
    limits = tuple(args.discard_limit)
    full = {}
    for task in teachers:
        q = np.full(n, np.nan)
        q[held] = scores[task]
        full[task] = q
    view = SampleView(crops=labels.crop[used], lm68=labels.lm68[used])

    def spread(values: np.ndarray) -> np.ndarray:
        q = np.full(n, np.nan)
        q[used] = values
        return q

    results = [
        evaluate_qualities("teacher:utility", f"utility teacher ({teachers['utility'].info['model']})", pairs,
                           [full["utility"]], args.fmr, limits),
        evaluate_qualities("teacher:perceptual", f"perceptual teacher ({teachers['perceptual'].info['model']})",
                           pairs, [full["perceptual"]], args.fmr, limits),
        evaluate_qualities("baseline:sharpness", "Laplacian sharpness", pairs, [spread(sharpness(view))],
                           args.fmr, limits),
        evaluate_qualities("baseline:random", "random", pairs,
                           [spread(random_quality(view, s)) for s in range(args.random_seeds)], args.fmr, limits),
    ]
    curves = {(f"{r.name} (seed 0 of {r.seeds})" if r.seeds > 1 else r.name): r.curve for r in results}
    plot_edc(curves, png, limit=max(limits),
             title=f"Teachers' EDC, held-out LFW identities, threshold at FMR {args.fmr:g}")
    return pairs, results


def to_markdown(doc: dict) -> str:
    a, b, c = doc["label_agreement"], doc["severity_ladders"], doc["edc"]
    lines = [
        "# Teachers on held-out identities (issue #4)", "",
        f"Label set `{doc['labels']}`; {doc['held_out']['identities']} held-out identities "
        f"({doc['held_out']['samples']} samples; share {HELD_OUT}, seed {SPLIT_SEED}, as fiqa-train). "
        f"Utility teacher `{doc['teachers']['utility']['path']}` ({doc['teachers']['utility']['model']}), "
        f"perceptual teacher `{doc['teachers']['perceptual']['path']}` ({doc['teachers']['perceptual']['model']}). "
        f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores; {doc['seconds']:.0f} s.", "",
        "## (a) Agreement with their own labels", "",
        "| teacher | label | part | n | SRCC | PLCC | PLCC (logistic) | KRCC |",
        "|---|---|---|---:|---:|---:|---:|---:|"]
    for task, e in a.items():
        for part in ("all", "clean", "degraded"):
            if part in e:
                r = e[part]
                lines.append(f"| {task} | {e['label']} | {part} | {r['n']} | {r['srcc']:.4f} | {r['plcc']:.4f} | "
                             f"{r['plcc_fit']:.4f} | {r['krcc']:.4f} |")
    lines += ["", f"## (b) Severity ladders ({doc['ladder']['faces']} held-out clean faces, severities "
                  f"{', '.join(f'{s:g}' for s in doc['ladder']['severities'])})", "",
              "Spearman between severity and score (pooled over faces / mean per face) and the share of faces whose "
              "score never rises as the severity does.", "",
              "| degradation | utility SRCC pooled | per face | monotonic "
              "| perceptual SRCC pooled | per face | monotonic |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, e in b.items():
        u, p = e["utility"], e["perceptual"]
        lines.append(f"| {kind} | {u['srcc_pooled']:+.3f} | {u['srcc_per_face_mean']:+.3f} "
                     f"| {u['monotonic_share']:.2f} "
                     f"| {p['srcc_pooled']:+.3f} | {p['srcc_per_face_mean']:+.3f} | {p['monotonic_share']:.2f} |")
    lim = [f"{v:g}" for v in c["settings"]["discard_limits"]]
    lines += ["", "## (c) EDC (dlib ResNet, cross-quality pairs)", "",
              f"{c['pairs']['genuine']} genuine / {c['pairs']['impostor']} impostor comparisons, "
              f"{c['settings']['degraded_share']:.0%} of each with one degraded side; threshold "
              f"{c['threshold']:.4f} fixed at FMR {c['settings']['fmr']:g} (achieved {c['fmr_at_threshold']:.4g}) "
              f"at 0% discard; FNMR there {c['fnmr_at_0_discard']:.4f}; pair quality = min; step-wise pAUC. "
              "Lower is better; excess = pAUC - theoretical best.", "",
              "| method | " + " | ".join(f"pAUC@{v} | excess@{v}" for v in lim) + " |",
              "|---|" + "---:|---:|" * len(lim)]
    for m in c["methods"]:
        cells = []
        for v in lim:
            sd = f" ± {m['pauc_std'][v]:.4f}" if "pauc_std" in m else ""
            cells.append(f"{m['pauc'][v]:.4f}{sd} | {m['pauc_excess'][v]:.4f}")
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    lines.append("| theoretical best | " + " | ".join(f"{c['theoretical_best'][v]:.4f} | 0" for v in lim) + " |")
    lines += ["", f"![EDC]({doc['edc_png']})", "", f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, required=True, help="label set (fiqa-labels --out DIR)")
    ap.add_argument("--utility", type=Path, required=True, help="utility teacher run directory (teacher.json/.pt)")
    ap.add_argument("--perceptual", type=Path, required=True, help="perceptual teacher run directory")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    ap.add_argument("--ladder-faces", type=int, default=64, help="held-out clean faces per severity ladder")
    ap.add_argument("--kinds", nargs="+", default=list(DEGRADATION_TYPES), choices=DEGRADATION_TYPES,
                    metavar="KIND", help="degradation types for the ladders (default: all)")
    ap.add_argument("--fmr", type=float, default=1e-2)
    ap.add_argument("--discard-limit", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--degraded-share", type=float, default=0.5)
    ap.add_argument("--impostors", type=int, default=None, help="impostor comparisons (default 100/FMR)")
    ap.add_argument("--max-genuine-per-identity", type=int, default=50, help="0 = all")
    ap.add_argument("--random-seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from fiqa_compile.train.data import LabelSet

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = machine()
    labels = LabelSet.load(args.labels)
    teachers = load_teachers(args.utility, args.perceptual)
    held = held_out_rows(labels)
    print(f"{len(held)} held-out samples of {len(np.unique(labels.identity[held]))} identities", flush=True)
    scores = {task: t.score(labels.crop[held], labels.lm68[held], batch_size=args.batch_size).astype(np.float64)
              for task, t in teachers.items()}
    agreement = label_agreement(teachers, scores, labels, held)
    for task, e in agreement.items():
        print(f"(a) {task} vs {e['label']}: SRCC {e['all']['srcc']:.4f}  PLCC {e['all']['plcc']:.4f}  "
              f"(n={e['all']['n']})", flush=True)

    clean = held[labels.version[held] == 0]
    if len(clean) == 0:
        raise SystemExit("eval_teachers: no clean held-out sample; the label set is empty or inconsistent")
    rng = np.random.default_rng(args.seed)
    faces = np.sort(rng.choice(clean, size=min(args.ladder_faces, len(clean)), replace=False))
    print(f"(b) severity ladders on {len(faces)} faces:", flush=True)
    ladders = severity_ladders(teachers, labels, faces, args.kinds, SEVERITIES, args.batch_size)

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "teachers_edc.png"
    pairs, results = edc_comparison(teachers, scores, labels, held, args, png)
    first = results[0].curve
    print("(c) EDC:")
    print(format_table(results, args.discard_limit))
    doc = {
        "benchmark": "teachers on held-out identities (issue #4)", "labels": str(args.labels),
        "command": "python bench/eval_teachers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "teachers": {task: {"path": str(t.path), "model": t.info.get("model"), "sha256": t.info.get("sha256"),
                            "complete": t.info.get("complete"), "best_held_out_srcc": t.info.get("best_held_out_srcc")}
                     for task, t in teachers.items()},
        "held_out": {"share": HELD_OUT, "seed": SPLIT_SEED, "samples": int(len(held)),
                     "identities": int(len(np.unique(labels.identity[held])))},
        "label_agreement": agreement,
        "ladder": {"faces": int(len(faces)), "severities": list(SEVERITIES), "seed": "row index of the face"},
        "severity_ladders": ladders,
        "edc": {"pairs": pairs.summary(),
                "settings": {"fmr": args.fmr, "discard_limits": list(args.discard_limit), "pair_quality": "min",
                             "degraded_share": args.degraded_share, "random_seeds": args.random_seeds,
                             "max_genuine_per_identity": args.max_genuine_per_identity or None},
                "threshold": first.threshold, "fmr_at_threshold": first.fmr_at_threshold,
                "fnmr_at_0_discard": first.start_error,
                "theoretical_best": {f"{k:g}": v for k, v in first.pauc_best.items()},
                "methods": [r.to_dict() for r in results]},
        "edc_png": png.name, "machine": info, "seconds": round(time.perf_counter() - t_start, 1),
    }
    (args.out / "teachers_eval.json").write_text(json.dumps(finite_or_null(doc), indent=2) + "\n")
    md = to_markdown(doc)
    (args.out / "teachers_eval.md").write_text(md)
    print(f"wrote {args.out / 'teachers_eval.json'}, teachers_eval.md and {png.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
