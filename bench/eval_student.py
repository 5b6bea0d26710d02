"""How closely distilled students rank faces like their teachers, on people neither ever trained on.

    python bench/eval_student.py                                   # the embedded default student
    python bench/eval_student.py --student runs/student_faces --student runs/student

Uses the held-out identities of a ``fiqa-labels`` set (share 0.15, seed 0: the split the teachers and the
distillation hold out), clean photos and their degraded versions. The teachers score those crops here (no
cached targets are trusted); each student is run in torch fp32. Writes ``results/student_eval.json`` and
``.md``: SRCC per score on all held-out crops, on the clean ones and on the degraded ones.

The utility teacher's score is the mean over its 10 test-time views (``fiqa_compile.teachers.tta_views``), the
target the students are distilled on; SRCC with its single-view score is shown too, next to how well that single
view agrees with itself after a 2 px re-alignment (``bench/teacher_repeatability.py``).

Each INT8 model of each ``--bundle`` (default: the SDK's default bundles) is then run through ``fiqa_sdk.Scorer``
on its own runtime, on the same crops: SRCC with the fp32 student it was compiled from (when that student is
among those evaluated) and with the teachers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import label_set_missing, machine_basics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, default=Path("runs/labels/lfw-dev"), help="fiqa-labels directory")
    ap.add_argument("--student", type=Path, action="append", default=None,
                    help="student directory (student.pt + student.json), repeatable (default: the embedded one)")
    ap.add_argument("--bundle", type=Path, action="append", default=None,
                    help="bundle whose INT8 models to check on the same crops, repeatable (default: the SDK's "
                         "default-cpu and default-android-arm64)")
    ap.add_argument("--ensemble", action="store_true",
                    help="add a row for the mean of the students' scores (a diagnostic: how much of the gap to the "
                         "teacher is one student's variance, which averaging removes; not a deployable model)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.ensemble and len(args.student or []) < 2:
        print("eval_student: --ensemble needs two or more --student directories", file=sys.stderr)
        return 2

    import torch
    from scipy.stats import spearmanr

    from fiqa_compile.student_store import EMBEDDED_STUDENT, load_student
    from fiqa_compile.distill import SCORE_NAMES, _predict
    from fiqa_compile.teachers import embedded_teacher_dirs, load_teacher
    from fiqa_compile.train.data import LabelSet

    if (why := label_set_missing(args.labels)) is not None:
        print(f"eval_student: {why}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    labels = LabelSet.load(args.labels)
    _, held = labels.split(0.15, 0)
    crops, lm68, version = labels.crop[held], labels.lm68[held], labels.version[held]
    t0 = time.time()
    teachers = {k: load_teacher(v) for k, v in embedded_teacher_dirs().items()}
    target = np.stack([teachers["utility"].score(crops, tta=True), teachers["perceptual"].score(crops, lm68)], 1)
    single_view = teachers["utility"].score(crops)
    teacher_seconds = time.time() - t0
    subsets = {"all": version >= 0, "clean": version == 0, "degraded": version > 0}
    rows, preds, mirror_preds = [], [], []
    for sdir in args.student or [EMBEDDED_STUDENT]:
        model, info = load_student(sdir)
        pred = _predict(model, crops)
        preds.append(pred)
        # how a mirror_average bundle scores: the mean over the face and its mirror image
        mirror_preds.append((pred + _predict(model, np.ascontiguousarray(crops[:, :, ::-1]))) / 2)
        cfg = info.get("config", {})
        hints = [f"{k} hint {cfg[w]}" for k, w in (("feature", "feature_weight"), ("token", "token_weight"),
                                                    ("embedding", "embedding_weight")) if cfg.get(w)]
        how = (f"{cfg.get('epochs', '?')} epochs; utility target "
               + ("10-view mean" if cfg.get("utility_tta") else "1 view") + ", "
               + ("online" + (f", augment {cfg['augment']}" if cfg.get("augment") else "")
                  + "".join(", " + h for h in hints) if cfg.get("online_utility") else "cached")
               + "".join(f", {what} {cfg[k]}" for k, what in (("mixup", "mixup"), ("part_swap", "part swap"))
                         if cfg.get(k))
               + (", mirror-mean loss" if cfg.get("mirror_average") else "")
               + (f", EMA {cfg['ema']}" if cfg.get("ema") else "")
               + (f", utility weight {cfg['utility_weight']}" if cfg.get("utility_weight", 1.0) != 1.0 else "")
               + (f", weight decay {cfg['weight_decay']}" if cfg.get("weight_decay", 1e-4) != 1e-4 else "")
               + (f", lr {cfg['lr']}" if "lr" in cfg else "")
               + (f"; started from the {info['init'].get('epochs', '?')}-epoch student {info['init']['sha256'][:12]}"
                  if info.get("init") else "") + f"; {info.get('data', '?')}")
        shown = sdir.resolve().relative_to(ROOT) if sdir.resolve().is_relative_to(ROOT) else sdir
        rows.append({"student": str(shown), "arch": info["student"], "data": info.get("data"), "how": how,
                     "command": info.get("command"), "sha256": info["sha256"],
                     "srcc": {sub: srcc_by_score(pred[m], target[m]) for sub, m in subsets.items()},
                     "srcc_mirror_average": {sub: srcc_by_score(mirror_preds[-1][m], target[m])
                                             for sub, m in subsets.items()},
                     "srcc_utility_single_view": {sub: round(float(spearmanr(pred[m, 0], single_view[m]).statistic), 4)
                                                  for sub, m in subsets.items()}})
    if args.ensemble:
        mean = np.mean(preds, 0)  # students all predict z-scored teacher scores, so their scales agree
        rows.append({"student": f"mean of the {len(preds)} students above", "arch": "ensemble", "data": None,
                     "how": "diagnostic, not deployable", "command": None, "sha256": None,
                     "srcc": {sub: srcc_by_score(mean[m], target[m]) for sub, m in subsets.items()},
                     "srcc_mirror_average": {sub: srcc_by_score(np.mean(mirror_preds, 0)[m], target[m])
                                             for sub, m in subsets.items()},
                     "srcc_utility_single_view": {sub: round(float(spearmanr(mean[m, 0], single_view[m]).statistic), 4)
                                                  for sub, m in subsets.items()}})
    bundles = []
    for bdir in args.bundle or sorted((ROOT / "sdk/fiqa_sdk/bundles").glob("default-*")):
        bundles.extend(int8_rows(bdir, crops, target,
                                 {r["sha256"]: p for r, p in zip(rows, zip(preds, mirror_preds))}))
    record = {"benchmark": "student_eval", "labels": str(args.labels),
              "held_out": {"crops": int(len(held)), "identities": int(len(np.unique(labels.identity[held]))),
                           "clean": int(subsets["clean"].sum()), "degraded": int(subsets["degraded"].sum())},
              "teacher_seconds": round(teacher_seconds, 1), "machine": machine_basics(), "students": rows,
              "int8": bundles}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "student_eval.json").write_text(json.dumps(record, indent=2))
    h = record["held_out"]
    lines = ["# Students vs teachers on held-out people", "",
             f"{h['crops']} crops of {h['identities']} held-out LFW identities ({h['clean']} clean, {h['degraded']} "
             "degraded) from `" + str(args.labels) + "`; SRCC of the fp32 student with each teacher (utility: the "
             "mean of the teacher's 10 test-time views; *1 view*: its single forward pass).", "",
             "| student | distilled | all: utility | all: perceptual | clean: utility | clean: perceptual "
             "| degraded: utility | degraded: perceptual | all: utility, 1 view "
             "| all: utility, face + mirror | all: perceptual, face + mirror |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["srcc"]
        name = f"`{r['student']}`" if r["sha256"] else r["student"]
        lines.append(f"| {name} | {r['how']} | " + " | ".join(f"{s[sub][n]:.4f}" for sub in subsets
                                                             for n in SCORE_NAMES)
                     + f" | {r['srcc_utility_single_view']['all']:.4f} | "
                     + " | ".join(f"{r['srcc_mirror_average']['all'][n]:.4f}" for n in SCORE_NAMES) + " |")
    if bundles:
        lines += ["", "INT8 models of the bundles, each on its own runtime through `fiqa_sdk.Scorer`, on the same crops "
                  "(SRCC; vs fp32: the student the bundle was compiled from, scored as the bundle scores: with `mirror_average` "
                  "the mean over the face and its mirror image):", "",
                  "| bundle | model | runtime | mirror average | vs fp32: utility | vs fp32: perceptual "
                  "| vs teacher: utility | vs teacher: perceptual |", "|---|---|---|---|---:|---:|---:|---:|"]
        for b in bundles:
            fp = b["vs_fp32"] or {}
            lines.append(f"| `{b['bundle']}` | {b['model']} | {b['backend']} | "
                         + ("yes" if b["mirror_average"] else "no") + " | "
                         + " | ".join(f"{fp[n]:.4f}" if n in fp else "-" for n in SCORE_NAMES) + " | "
                         + " | ".join(f"{b['vs_teacher'][n]:.4f}" for n in SCORE_NAMES) + " |")
    (args.out / "student_eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def srcc_by_score(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Spearman of each score column ([N, 2] in SCORE_NAMES order) of ``pred`` with ``ref``."""
    from scipy.stats import spearmanr

    from fiqa_compile.distill import SCORE_NAMES

    return {n: round(float(spearmanr(pred[:, i], ref[:, i]).statistic), 4) for i, n in enumerate(SCORE_NAMES)}


def int8_rows(bundle_dir: Path, crops: np.ndarray, target: np.ndarray, fp32_by_sha: dict) -> list[dict]:
    """SRCC of every INT8 model of a bundle (on the runtime the SDK picks for it) with its fp32 student and teachers."""
    from fiqa_compile.distill import SCORE_NAMES
    from fiqa_sdk import Scorer
    from fiqa_sdk.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    pair = fp32_by_sha.get(bundle.provenance.get("student_sha256"))  # (one pass, face + mirror mean)
    fp32 = None if pair is None else pair[1] if bundle.mirror_average else pair[0]
    shown = bundle_dir.resolve().relative_to(ROOT) if bundle_dir.resolve().is_relative_to(ROOT) else bundle_dir
    rows = []
    for m in bundle.models:
        if not m.precision.startswith("int8"):
            continue
        scorer = Scorer(bundle, model=m.name, detector=None, threads=1)
        got = scorer.score(crops)
        out = np.stack([getattr(got, n) for n in SCORE_NAMES], 1)
        rows.append({"bundle": str(shown), "model": m.name, "backend": scorer.info.backend,
                     "mirror_average": bundle.mirror_average,
                     "vs_fp32": srcc_by_score(out, fp32) if fp32 is not None else None,
                     "vs_teacher": srcc_by_score(out, target)})
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
