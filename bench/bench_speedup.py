"""What the student saves: its deployed INT8 forms against the embedded teachers it replaces, one face, CPU.

The student gives both scores in one model call: the default bundles run the face and its mirror image as one
batch of 2 and average them (their ``mirror_average``), as :class:`fiqa_sdk.Scorer` does. The teachers give them as two models: the utility score the student
learned is ViT-FIQA mini's mean over its 10 test-time views (one view is not repeatable, see
``bench/teacher_repeatability.py``), the perceptual score is DSL-FIQA tiny (which averages its own crops). Each is
timed in torch fp32 (eval, no grad), batch 1 (the 10 views as one batch of 10), next to the student's default
bundles through ``fiqa_runtimes`` exactly as :class:`fiqa_sdk.Scorer` runs them: full-INT8 TFLite on LiteRT and
Q/DQ INT8 ONNX on ONNX Runtime. Every configuration runs on the same aligned face, at 1 thread (and 2), with all
configurations interleaved so a load change on this shared machine hits them alike. Writes
``bench/results/speedup.{json,md}``.

    python bench/bench_speedup.py [--runs 200] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when loaded by path
from common import machine_basics, time_interleaved  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def runners(threads: int) -> dict[str, Callable[[], object]]:
    """Callables scoring one aligned face, keyed by what they are; torch and the engines use ``threads``."""
    import torch

    from fiqa_compile.teachers import load_teacher_pair, tta_views
    from fiqa_compile.train.data import to_tensor
    from fiqa_sdk import Scorer, faces_to_tensor, load_sample
    from fiqa_sdk.bundle import DEFAULT_BUNDLES, BUNDLES_DIR

    torch.set_num_threads(threads)
    face = load_sample("tom_hanks")[None]  # insightface's 112x112 aligned sample
    teachers = load_teacher_pair()
    utility, perceptual = teachers["utility"].model.eval(), teachers["perceptual"].model.eval()
    one, ten = to_tensor(face), to_tensor(np.concatenate(tta_views(face)))
    x = faces_to_tensor(face)
    tflite = Scorer(BUNDLES_DIR / DEFAULT_BUNDLES["android-arm64"], backend="litert", detector=None, threads=threads)
    qdq = Scorer(BUNDLES_DIR / DEFAULT_BUNDLES["cpu"], backend="onnxruntime", detector=None, threads=threads,
                 model="onnx_qdq")

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def call():
            with torch.no_grad():
                return fn()
        return call

    return {
        "student INT8 TFLite (LiteRT)": lambda: tflite.raw(x),
        "student Q/DQ INT8 ONNX (ORT)": lambda: qdq.raw(x),
        "utility teacher, 1 view (torch)": no_grad(lambda: utility(one).quality),
        "utility teacher, 10 views (torch)": no_grad(lambda: utility(ten).quality),
        "perceptual teacher (torch)": no_grad(lambda: perceptual(one)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="timed calls per configuration (default 200)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    rows = []
    for th in args.threads:
        timings = time_interleaved(runners(th), args.runs, args.warmup)
        teachers_ms = (timings["utility teacher, 10 views (torch)"]["median_ms"]
                       + timings["perceptual teacher (torch)"]["median_ms"])
        student_ms = timings["student INT8 TFLite (LiteRT)"]["median_ms"]
        for name, t in timings.items():
            rows.append({"threads": th, "config": name, **t,
                         "teachers_over_this": round(teachers_ms / t["median_ms"], 1)})
        rows.append({"threads": th, "config": "both teachers (utility 10 views + perceptual)",
                     "median_ms": round(teachers_ms, 3), "teachers_over_this": 1.0,
                     "speedup_of_int8_tflite": round(teachers_ms / student_ms, 1)})
    record = {"benchmark": "speedup", "machine": machine_basics(), "runs": args.runs, "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speedup.json").write_text(json.dumps(record, indent=2))
    lines = ["# Student vs the teachers it replaces", "",
             f"One aligned 112x112 face, batch 1 (the utility teacher's 10 views as one batch of 10; the student's "
             "bundles, mirror-averaged, run the face and its mirror as one batch of 2); median (p90) "
             f"ms over {args.runs} interleaved calls. Machine: {record['machine']['cpu']}, "
             f"{record['machine']['cores']} cores, load average at start {record['machine']['loadavg_at_start']} "
             "(shared VM). Last column: the two teachers' time for both scores (utility as distilled: the 10-view "
             "mean; perceptual) over this row's.", "",
             "| threads | configuration | median ms (p90) | teachers / this |", "|---:|---|---:|---:|"]
    for r in rows:
        p90 = f" ({r['p90_ms']:.2f})" if "p90_ms" in r else ""
        lines.append(f"| {r['threads']} | {r['config']} | {r['median_ms']:.2f}{p90} | {r['teachers_over_this']:.1f}x |")
    (args.out / "speedup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
