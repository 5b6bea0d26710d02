"""End-to-end capture-pipeline throughput: detect + track + align + score + measures + gate on 640x480 frames.

    python bench/bench_pipeline.py                      # the embedded default bundle
    python bench/bench_pipeline.py --bundle path/to/bundle --backend onnxruntime --threads 1 2

Two scenes built from photos that pip packages ship: one face (matplotlib's Grace Hopper portrait, scaled into a
640x480 frame, face ~50 px between the eyes) and several faces (insightface's t1 group photo letterboxed to
640x480). Each frame is shifted by a pixel so the tracker sees motion. For every thread count it reports the
end-to-end FPS of ``CapturePipeline.process`` (no capture writing: disk speed is not the question) and a
per-stage breakdown of the same work timed stage by stage. Results go to ``bench/results/pipeline.json`` and
``pipeline.md``.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fiqa_sdk import align_face, load_sample
from fiqa_sdk.bundle import BundleError, default_bundle_path
from fiqa_sdk.detection import RetinaFaceDetector, auto_max_side
from fiqa_sdk.measures import image_measures, landmark_measures
from fiqa_sdk.pipeline import CapturePipeline
from fiqa_sdk.scorer import Scorer

RESULTS = Path(__file__).resolve().parent / "results"
W, H = 640, 480


def scenes() -> dict[str, np.ndarray]:
    """640x480 BGR frames: one face, several faces."""
    g = load_sample("grace_hopper")
    g = cv2.resize(g, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    one = np.full((H, W, 3), 90, np.uint8)
    y0, x0 = (H - g.shape[0]) // 2, (W - g.shape[1]) // 2
    one[y0:y0 + g.shape[0], x0:x0 + g.shape[1]] = g
    t1 = load_sample("t1")
    scale = min(W / t1.shape[1], H / t1.shape[0])
    t1 = cv2.resize(t1, (round(t1.shape[1] * scale), round(t1.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    many = np.zeros((H, W, 3), np.uint8)
    y0, x0 = (H - t1.shape[0]) // 2, (W - t1.shape[1]) // 2
    many[y0:y0 + t1.shape[0], x0:x0 + t1.shape[1]] = t1
    return {"one face": one, "several faces": many}


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_ms": round(1e3 * statistics.median(s), 2), "p90_ms": round(1e3 * s[int(0.9 * (len(s) - 1))], 2)}


def _detect_and_refine(detector, frame: np.ndarray) -> tuple[list, float]:
    """RetinaFace's two parts apart: the network on the frame, then each face's landmark refinement (the network
    again on a 256x256 view of it); returns the refined detections and the refinement's share in seconds."""
    side = detector.max_side or auto_max_side(*frame.shape[:2])
    found = detector._detect_scaled(frame, side, detector.score_threshold)
    t0 = time.perf_counter()
    for _ in range(detector.refine_landmarks):
        found = [detector._refined(frame, d) for d in found]
    return found, time.perf_counter() - t0


def bench_scene(scorer: Scorer, frame: np.ndarray, frames: int, warmup: int) -> dict:
    pipe = CapturePipeline(scorer)
    shifted = [np.roll(frame, k % 3, axis=1) for k in range(3)]
    for i in range(warmup):
        pipe.process(shifted[i % 3], i, i / 30.0)
    per_frame, faces, gate = [], [], []
    t_start = time.perf_counter()
    for i in range(warmup, warmup + frames):
        t0 = time.perf_counter()
        report = pipe.process(shifted[i % 3], i, i / 30.0)
        per_frame.append(time.perf_counter() - t0)
        faces.append(len(report.faces))
        gate.append(report.timings_ms["track_gate"] / 1e3)  # tracker + gate of the same frames, as process ran them
    wall = time.perf_counter() - t_start

    stages: dict[str, list[float]] = {"detect": [], "refine": [], "align": [], "score": [], "measures": []}
    split = isinstance(scorer.detector, RetinaFaceDetector)
    for i in range(max(5, frames // 2)):
        f = shifted[i % 3]
        t0 = time.perf_counter()
        dets, refine = _detect_and_refine(scorer.detector, f) if split else (scorer.detect(f), 0.0)
        t1 = time.perf_counter()
        aligned = np.stack([align_face(f, d.landmarks) for d in dets]) if dets else None
        t2 = time.perf_counter()
        if aligned is not None:
            scorer.score(aligned)
        t3 = time.perf_counter()
        for d, a in zip(dets, aligned if aligned is not None else []):
            image_measures(a)
            landmark_measures(d.landmarks)
        t4 = time.perf_counter()
        for k, v in zip(stages, (t1 - t0 - refine, refine, t2 - t1, t3 - t2, t4 - t3)):
            stages[k].append(v)
    stages["track_gate"] = gate
    return {"frames": frames, "faces_per_frame": round(float(np.mean(faces)), 2), "fps": round(frames / wall, 2),
            "frame": _ms(per_frame), "stages": {k: _ms(v) for k, v in stages.items()}}


def _versions() -> dict[str, str]:
    out = {"opencv": cv2.__version__, "numpy": np.__version__}
    for dist in ("fiqa-sdk", "onnxruntime", "ai-edge-litert", "tflite-runtime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def to_markdown(doc: dict) -> str:
    info = doc["scorer"]
    lines = [
        "# Capture pipeline throughput (detect + track + align + score + measures + gate), 640x480",
        "",
        f"Bundle `{info['bundle_id']}` ({info['target']}): `{info['model_file']}` [{info['precision']}] on "
        f"**{info['backend']}**; detector {info['detector']} on {info['detector_backend']}, one landmark-refinement "
        "pass per face. "
        f"{doc['host']['machine']}, {doc['host']['cpus']} CPUs visible (1-min load average "
        f"{doc['host'].get('load_average_1m_start', 'n/a')} at the start, {doc['host']['load_average_1m']} at the end); "
        f"{doc['frames']} timed frames after {doc['warmup']} warm-up "
        "frames per row. Stage columns (ms) are medians of the same work timed stage by stage: detect is RetinaFace on "
        "the frame, refine its landmark refinement (the network again on a 256x256 view of each face), score "
        "`Scorer.score` of the frame's aligned faces, track + gate as `CapturePipeline.process` timed them.",
        "",
        "| scene | threads | max_side | faces/frame | FPS | frame median ms | frame p90 ms | detect | refine | align "
        "| score | measures | track + gate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        st = r["stages"]
        cell = {k: st[k]["median_ms"] if k in st else "n/a" for k in ("refine", "track_gate")}
        lines.append(f"| {r['scene']} | {r['threads']} | {r.get('max_side', 640)} | {r['faces_per_frame']} | {r['fps']} | "
                     f"{r['frame']['median_ms']} | {r['frame']['p90_ms']} | {st['detect']['median_ms']} | "
                     f"{cell['refine']} | {st['align']['median_ms']} | {st['score']['median_ms']} | "
                     f"{st['measures']['median_ms']} | {cell['track_gate']} |")
    if doc.get("note"):
        lines += ["", doc["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded default bundle)")
    p.add_argument("--backend", default="auto", help="model backend (default: auto)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to measure")
    p.add_argument("--max-side", type=int, nargs="+", default=[640, 320],
                   help="RetinaFace max_side values to measure (default: 640 and 320, which the automatic size picks "
                        "for these 640x480 frames)")
    p.add_argument("--frames", type=int, default=60, help="timed frames per scene and thread count")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--name", default="pipeline", help="output file stem")
    p.add_argument("--note", default="", help="free text appended to the Markdown (e.g. what the bundle is)")
    args = p.parse_args(argv)
    try:
        bundle = Path(args.bundle) if args.bundle else default_bundle_path()
    except BundleError as e:
        print(f"error: {e}\nPass --bundle <folder> to benchmark a bundle you built.", file=sys.stderr)
        return 2
    results, info, load_start = [], None, round(os.getloadavg()[0], 2)
    for threads in args.threads:
        cv2.setNumThreads(threads)
        for max_side in args.max_side:
            scorer = Scorer(bundle, backend=args.backend, threads=threads, detector_options={"max_side": max_side})
            info = scorer.info.to_dict()
            for name, frame in scenes().items():
                r = {"scene": name, "threads": threads, "max_side": max_side,
                     **bench_scene(scorer, frame, args.frames, args.warmup)}
                results.append(r)
                print(f"{name:14s} threads={threads} max_side={max_side}: {r['fps']:6.1f} FPS, "
                      f"{r['faces_per_frame']} faces/frame, frame median {r['frame']['median_ms']} ms", flush=True)
    doc = {"benchmark": "capture pipeline end to end", "frame_size": [W, H], "frames": args.frames,
           "warmup": args.warmup, "scorer": info, "results": results, "note": args.note,
           "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_1m": round(os.getloadavg()[0], 2), "load_average_1m_start": load_start,
                    "python": platform.python_version(), "versions": _versions()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(to_markdown(doc))
    print(f"wrote {args.out / (args.name + '.json')} and {args.out / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
