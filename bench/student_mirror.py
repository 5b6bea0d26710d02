"""Diagnostic for issue #5: where is the student's remaining utility gap to the teacher?

On the held-out crops of a label set (``LabelSet.split(0.15, seed=0)``, the people no model trained on), the
embedded student's utility output is compared with the utility teacher's 10-view mean (the distillation target)
as is, averaged with its output on the mirrored crop (what the bundles score), and averaged over the teacher's
own 10 views (would more test-time views close the gap? if not, it is not noise); also how well the student
agrees with its own mirror. Then the same face-and-mirror SRCC on 3,500 crops of the *training* people (seeded
draw): a large difference from the held-out people says the gap is generalisation, which more distinct people
close and more epochs do not. Writes ``bench/results/student_mirror.{json,md}``.

    python bench/student_mirror.py [--labels runs/labels/lfw-dev]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when loaded by path
from common import label_set_missing, machine_basics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRAINING_CROPS = 3500  # a seeded draw from the training people's crops: enough for a stable SRCC, ~2 min of teacher


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, default=Path("runs/labels/lfw-dev"), help="fiqa-labels directory")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if (why := label_set_missing(args.labels)) is not None:
        print(f"student_mirror: {why}", file=sys.stderr)
        return 2
    from scipy.stats import spearmanr

    from fiqa_compile.distill import _predict
    from fiqa_compile.student_store import EMBEDDED_STUDENT, load_student
    from fiqa_compile.teachers import TTA_SHIFTS, load_teacher_pair, tta_views
    from fiqa_compile.train.data import LabelSet

    labels = LabelSet.load(args.labels)
    train, held = labels.split(0.15, 0)
    train = np.sort(np.random.default_rng(0).choice(train, min(TRAINING_CROPS, len(train)), replace=False))
    crops = labels.crop[held]
    model, info = load_student(EMBEDDED_STUDENT)
    per_view = [_predict(model, v)[:, 0] for v in tta_views(crops)]
    assert TTA_SHIFTS[0] == (0, 0)  # so the first two views are the crop as is and its mirror image
    as_is, mirrored = per_view[0], per_view[1]
    ten_views = np.mean(per_view, axis=0)
    utility_teacher = load_teacher_pair()["utility"]
    teacher = utility_teacher.score(crops, tta=True)
    seen = _predict(model, labels.crop[train], mirror_average=True)[:, 0]
    seen_teacher = utility_teacher.score(labels.crop[train], tta=True)
    srcc = {"as_is": float(spearmanr(as_is, teacher).statistic),
            "face_and_mirror_mean": float(spearmanr((as_is + mirrored) / 2, teacher).statistic),
            "teacher_10_views_mean": float(spearmanr(ten_views, teacher).statistic),
            "student_vs_its_mirror": float(spearmanr(as_is, mirrored).statistic),
            "training_people_face_and_mirror_mean": float(spearmanr(seen, seen_teacher).statistic)}
    record = {"benchmark": "student_mirror", "labels": str(args.labels), "crops": int(len(crops)),
              "training_people_crops": int(len(train)), "student_sha256": info["sha256"],
              "srcc_utility_vs_10_view_teacher": srcc, "machine": machine_basics()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "student_mirror.json").write_text(json.dumps(record, indent=2))
    md = ["# Student utility: as is vs averaged with its mirror image", "",
          f"{len(crops)} held-out crops of `{args.labels}`; SRCC with the utility teacher's 10-view mean.", "",
          "| student output | SRCC |", "|---|---:|",
          f"| as is (one pass) | {srcc['as_is']:.4f} |",
          f"| mean of face and mirror (two passes, as the bundles score) | {srcc['face_and_mirror_mean']:.4f} |",
          f"| mean over the teacher's 10 views (ten passes) | {srcc['teacher_10_views_mean']:.4f} |",
          f"| (student vs its own mirror) | {srcc['student_vs_its_mirror']:.4f} |",
          f"| face and mirror, on {len(train)} crops of the *training* people | "
          f"{srcc['training_people_face_and_mirror_mean']:.4f} |"]
    (args.out / "student_mirror.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
