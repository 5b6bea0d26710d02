"""Face-detector latency on 640x480 frames: RetinaFace on ONNX Runtime and OpenCV DNN, 1 and 2 threads,
max_side 320 and 640, with and without landmark refinement, plus dlib HOG (upsample 0 and 1) for reference. Writes bench/results/detector.{json,md}.

Usage:  python bench/bench_detector.py [--runs 50] [--warmup 5] [--out bench/results]

Each configuration times ``detector.detect(frame)`` (resize, inference, decoding, NMS: what an application
pays per frame) ``--runs`` times after ``--warmup`` untimed calls, and reports the median and 90th percentile.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when loaded by path
from common import cpu_name  # noqa: E402

from fiqa_sdk import create_detector, load_sample

FRAME_W, FRAME_H = 640, 480


def letterbox(img: np.ndarray, w: int = FRAME_W, h: int = FRAME_H) -> np.ndarray:
    """Fit ``img`` inside a w x h grey frame keeping its aspect ratio (a camera-sized test frame)."""
    s = min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    out = np.full((h, w, 3), 114, np.uint8)
    y0, x0 = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    return out


def time_detector(det, frame: np.ndarray, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        det.detect(frame)
    times, faces = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        faces = len(det.detect(frame))
        times.append((time.perf_counter() - t0) * 1000)
    t = np.array(times)
    return {"faces": faces, "median_ms": round(float(np.median(t)), 2), "p90_ms": round(float(np.percentile(t, 90)), 2),
            "min_ms": round(float(t.min()), 2), "runs": runs}


def machine() -> dict:
    cpu = cpu_name()
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.runs < 10:
        p.error("--runs must be at least 10 for a meaningful p90")

    frames = {"t1 (6 faces)": letterbox(load_sample("t1")), "astronaut (1 face)": letterbox(load_sample("astronaut"))}
    info = machine()
    rows = []
    for fname, frame in frames.items():
        for backend in ("onnxruntime", "opencv"):
            for threads in (1, 2):
                for max_side in (320, 640):
                    for refine in (True, False):  # the default re-detects each face's landmarks (one pass each)
                        det = create_detector("retinaface", backend=backend, threads=threads, max_side=max_side,
                                              refine_landmarks=refine)
                        r = time_detector(det, frame, args.runs, args.warmup)
                        rows.append({"frame": fname, "detector": "retinaface", "backend": backend,
                                     "threads": threads, "max_side": max_side, "refine": "yes" if refine else "no",
                                     **r})
                        print(rows[-1], flush=True)
        for upsample in (0, 1):  # dlib is single-threaded; HOG runs on the full 640x480 frame
            det = create_detector("dlib", upsample=upsample)
            r = time_detector(det, frame, args.runs, args.warmup)
            rows.append({"frame": fname, "detector": "dlib", "backend": f"dlib-hog upsample={upsample}",
                         "threads": 1, "max_side": FRAME_W, "refine": "-", **r})
            print(rows[-1], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "detector latency, 640x480 frame", "machine": info, "rows": rows}
    (args.out / "detector.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Detector latency on a {FRAME_W}x{FRAME_H} frame", "",
             f"CPU: {info['cpu']} ({info['cores']} cores, load average {info['loadavg_at_start']} at start: "
             "a shared machine, so treat differences under ~20% as noise). "
             f"onnxruntime {info['onnxruntime']}, OpenCV {info['opencv']}. "
             f"{args.runs} timed runs after {args.warmup} warm-up calls of `detect()`.", "",
             "| frame | detector | backend | threads | max_side | refine landmarks | faces | median ms | p90 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['frame']} | {r['detector']} | {r['backend']} | {r['threads']} | {r['max_side']} | {r['refine']} "
              f"| {r['faces']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |" for r in rows]
    md = "\n".join(lines) + "\n"
    (args.out / "detector.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
