"""Soak: does memory stay flat over a long capture run, over many frame sizes, and over one huge batch of faces?

    python bench/bench_soak.py                           # 1 minute, 200 frame sizes, 4,000 faces
    python bench/bench_soak.py --minutes 30 --sizes 500 --photos ../shared/data/lfw-dev

Three runs, each reporting the process's resident memory (RSS, from /proc/self/statm):

* **capture**: ``CapturePipeline`` as ``examples/capture_gate.py`` wires it (the default bundle, RetinaFace, an
  ``IouTracker`` with a 1 s timeout, the gate with the bundle's thresholds, a ``CaptureWriter`` and a
  ``DecisionLog`` into a temporary folder, deleted afterwards) on a real clip, replayed from the file until
  ``--minutes`` have passed, RSS sampled every ``--sample-s`` seconds. The clip: ``--clip`` (any video), else one
  made here from ``--photos`` (60 lfw-dev people, seed 0, each pasted into a 640x480 frame for one second of
  12 FPS with a gentle drift, so tracks start and end, windows close and captures are written), else the sample
  clip of ``examples/make_sample_video.py``. Frame timestamps are the clip's, offset on every replay so time runs
  forward.
* **frame sizes**: ``RetinaFaceDetector.detect`` on ``--sizes`` frames of distinct sizes (seed 0, 120-1920 px a
  side, a portrait pasted into each so the prior boxes are really built), at the automatic ``max_side`` (at most
  640) and at each ``--max-side`` (default 1280, as ``fiqa-score --max-side`` on big photos): RSS after each frame,
  the anchor cache's entries, and the memory its anchors would hold without the cache's bound.
* **one batch**: ``Scorer.score`` on ``--faces`` aligned faces in one call: RSS before and after, and the peak of
  numpy's buffers during the call (tracemalloc).

"Growth" is the least-squares slope of RSS over the second half of a run (MB per minute for the capture run, MB
per 100 sizes for the frame sizes): the first half holds warm-up (engines' arenas, the first captures' buffers).
Writes ``results/soak.json`` (every sample) and ``results/soak.md``.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when loaded by path
from common import machine_basics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
W, H, FPS = 640, 480, 12.0
PEOPLE, FRAMES_EACH = 60, 12


def rss_mb() -> float:
    """Resident memory of this process now, MB (Linux /proc; elsewhere the peak, which is all resource gives)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of the second half of (xs, ys); 0 for fewer than 4 points."""
    half = len(xs) // 2
    if len(xs) - half < 4:
        return 0.0
    return float(np.polyfit(np.asarray(xs[half:]), np.asarray(ys[half:]), 1)[0])


def people_clip(photos: Path, path: Path) -> Path:
    """An MJPG clip of PEOPLE lfw-dev people, one per second (FRAMES_EACH frames at FPS), each photo pasted into a
    640x480 frame at a place of its own and drifting a few pixels per frame."""
    paths = sorted(photos.glob("*/*.jpg"))
    rng = np.random.default_rng(0)
    picks = [paths[i] for i in sorted(rng.choice(len(paths), min(PEOPLE, len(paths)), replace=False))]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    if not vw.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video to {path}")
    for person in picks:
        photo = cv2.imread(str(person), cv2.IMREAD_COLOR)
        x0, y0 = int(rng.integers(0, W - photo.shape[1])), int(rng.integers(0, H - photo.shape[0]))
        for k in range(FRAMES_EACH):
            frame = np.full((H, W, 3), 100, np.uint8)
            x, y = min(W - photo.shape[1], x0 + k), min(H - photo.shape[0], y0 + k // 2)
            frame[y:y + photo.shape[0], x:x + photo.shape[1]] = photo
            vw.write(frame)
    vw.release()
    return path


def sample_clip(path: Path) -> Path:
    sys.path.insert(0, str(EXAMPLES))
    import make_sample_video

    return make_sample_video.write(path)


def capture_soak(clip: Path, minutes: float, sample_s: float, threads: int, work: Path) -> dict:
    from fiqa_sdk.capture_io import CaptureWriter, DecisionLog
    from fiqa_sdk.pipeline import CapturePipeline
    from fiqa_sdk.scorer import Scorer
    from fiqa_sdk.sources import open_source
    from fiqa_sdk.tracking import IouTracker

    scorer = Scorer(threads=threads)
    writer = CaptureWriter(work / "captures", bundle_id=scorer.info.bundle_id)
    log = DecisionLog(work / "decisions.jsonl", bundle_id=scorer.info.bundle_id)
    pipeline = CapturePipeline(scorer, writer=writer, logger=log, tracker=IouTracker(max_missed_seconds=1.0))
    samples: list[tuple[float, int, float]] = []  # (seconds since start, frames, RSS MB)
    frames = replays = errors = written = 0
    offset = last_ts = 0.0
    t0 = next_sample = time.perf_counter()
    with log:
        while time.perf_counter() - t0 < 60 * minutes:
            with open_source(str(clip)) as source:
                for frame in source:
                    last_ts = offset + frame.timestamp
                    report = pipeline.process(frame.image, frames, last_ts)
                    errors += len(report.errors)
                    written += len(report.written)
                    frames += 1
                    now = time.perf_counter()
                    if now >= next_sample:
                        samples.append((round(now - t0, 2), frames, round(rss_mb(), 1)))
                        next_sample = now + sample_s
                    if now - t0 >= 60 * minutes:
                        break
            replays += 1
            offset = last_ts + 1.0 / FPS
        written += len(pipeline.flush().written)
    seconds = time.perf_counter() - t0
    samples.append((round(seconds, 2), frames, round(rss_mb(), 1)))
    scorer.close()
    rss = [s[2] for s in samples]
    return {"clip": clip.name, "minutes_asked": minutes, "seconds": round(seconds, 1), "frames": frames,
            "replays": replays, "fps": round(frames / seconds, 1), "faces": pipeline.counts["faces"],
            "accepted": pipeline.counts["accepted"], "rejected": pipeline.counts["rejected"],
            "captures_written": written, "write_errors": errors,
            "rss_first_mb": rss[0], "rss_min_mb": min(rss), "rss_median_mb": float(np.median(rss)),
            "rss_max_mb": max(rss), "rss_last_mb": rss[-1],
            "growth_mb_per_min": round(60 * slope([s[0] for s in samples], rss), 2),
            "bundle_id": scorer.info.bundle_id, "backend": scorer.info.backend, "threads": threads,
            "samples": samples}


def frame_sizes_soak(n: int, threads: int, max_side: int | None) -> dict:
    from fiqa_sdk import load_sample
    from fiqa_sdk.detection import RetinaFaceDetector

    det = RetinaFaceDetector(threads=threads, max_side=max_side)
    portrait = load_sample("grace_hopper")
    rng = np.random.default_rng(0)
    sizes: dict[tuple[int, int], None] = {}  # distinct, in the order drawn
    while len(sizes) < n:
        sizes[(int(rng.integers(120, 1921)), int(rng.integers(120, 1921)))] = None
    network_sizes: set[tuple[int, int]] = set()
    unbounded_bytes = 0
    rows: list[tuple[int, int, int, int, float, float]] = []  # (i, h, w, faces, cache entries, RSS MB)
    held_max = 0
    for i, (h, w) in enumerate(sizes):
        frame = np.full((h, w, 3), 100, np.uint8)
        s = 0.6 * min(h / portrait.shape[0], w / portrait.shape[1])
        face = cv2.resize(portrait, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        frame[:face.shape[0], :face.shape[1]] = face
        found = det.detect(frame)
        for size, anchors in det._anchor_cache.items():
            if size not in network_sizes:
                network_sizes.add(size)
                unbounded_bytes += anchors.nbytes
        held_max = max(held_max, sum(a.nbytes for a in det._anchor_cache.values()))
        rows.append((i, h, w, len(found), len(det._anchor_cache), round(rss_mb(), 1)))
    det.close()
    rss = [r[5] for r in rows]
    return {"max_side": max_side or "auto", "frame_sizes": n, "network_input_sizes": len(network_sizes),
            "frames_with_a_face": sum(r[3] > 0 for r in rows),
            "anchor_cache_limit": RetinaFaceDetector.ANCHOR_CACHE_SIZE,
            "anchor_cache_entries_max": max(r[4] for r in rows), "anchors_held_max_mb": round(held_max / 2**20, 2),
            "anchors_unbounded_mb": round(unbounded_bytes / 2**20, 2),
            "rss_first_mb": rss[0], "rss_max_mb": max(rss), "rss_last_mb": rss[-1],
            "growth_mb_per_100_sizes": round(100 * slope([r[0] for r in rows], rss), 2), "rows": rows}


def batch_soak(n: int, threads: int) -> dict:
    from fiqa_sdk import align_face, load_sample
    from fiqa_sdk.detection import RetinaFaceDetector
    from fiqa_sdk.scorer import Scorer

    det = RetinaFaceDetector(threads=threads)
    faces = [align_face(img, d.landmarks) for img in (load_sample("t1"), load_sample("astronaut"))
             for d in det.detect(img)]
    batch = np.stack([faces[i % len(faces)] for i in range(n)])
    scorer = Scorer(threads=threads, detector=None)
    before = rss_mb()
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        scores = scorer.score(batch)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    after = rss_mb()
    return {"faces": n, "input_mb": round(batch.nbytes / 2**20, 1), "max_batch": scorer.max_batch,
            "backend": scorer.info.backend, "seconds": round(seconds, 1), "scored": len(scores),
            "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
            "numpy_peak_during_call_mb": round(peak / 2**20, 1),
            "one_float_tensor_of_all_mb": round(n * 3 * 112 * 112 * 4 / 2**20, 1)}


def versions() -> dict:
    out = {"opencv": cv2.__version__, "numpy": np.__version__}
    for dist in ("onnxruntime", "ai-edge-litert"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def markdown(result: dict) -> str:
    m, c, b = result["machine"], result["capture"], result["batch"]
    f0 = result["frame_sizes"][0]
    lines = [
        "# Soak: memory over a long capture run, many frame sizes and one huge batch", "",
        f"CPU: {m['cpu']} ({m['cores']} cores, load average {m['loadavg_at_start']} at start: a shared machine, so "
        f"FPS is not a speed result). opencv {m['opencv']}, onnxruntime {m['onnxruntime']}, ai-edge-litert "
        f"{m['ai-edge-litert']}; {c['threads']} inference thread(s). Written by `python bench/bench_soak.py "
        f"{result['command']}`.", "",
        "## Capture pipeline on a clip", "",
        f"Clip: {c['clip']} replayed {c['replays']} times; bundle {c['bundle_id']} on {c['backend']}; "
        "detector, tracker, gate, capture writer and decision log as `examples/capture_gate.py` wires them.", "",
        "| run | frames | FPS | faces | captures written | RSS first / median / max / last (MB) | growth over the "
        "second half (MB/min) |",
        "|---|---:|---:|---:|---:|---|---:|",
        f"| {c['seconds'] / 60:.1f} min | {c['frames']} | {c['fps']} | {c['faces']} | {c['captures_written']} | "
        f"{c['rss_first_mb']:.0f} / {c['rss_median_mb']:.0f} / {c['rss_max_mb']:.0f} / {c['rss_last_mb']:.0f} | "
        f"{c['growth_mb_per_min']:+.2f} |", "",
        "## Detector on many frame sizes", "",
        f"{f0['frame_sizes']} frames of distinct sizes (120-1920 px a side), a portrait pasted into each; one "
        "detector per max_side, in turn (RSS is the process's, so each row starts from where the one above ended).",
        "",
        "| max_side | frames with a face found | network input sizes seen | anchor cache entries (max; limit) | "
        "anchors held, max (MB) | anchors an unbounded cache would hold (MB) | RSS first / max / last (MB) | growth "
        "(MB per 100 sizes) |",
        "|---|---:|---:|---|---:|---:|---|---:|"]
    lines += [f"| {f['max_side']} | {f['frames_with_a_face']} | {f['network_input_sizes']} | "
              f"{f['anchor_cache_entries_max']}; {f['anchor_cache_limit']} | {f['anchors_held_max_mb']} | "
              f"{f['anchors_unbounded_mb']} | {f['rss_first_mb']:.0f} / {f['rss_max_mb']:.0f} / {f['rss_last_mb']:.0f} "
              f"| {f['growth_mb_per_100_sizes']:+.2f} |" for f in result["frame_sizes"]]
    lines += ["", "## One call of `Scorer.score` on many faces", "",
              "| faces | their uint8 input (MB) | max_batch | numpy peak during the call (MB) | one float tensor of "
              "all of them would be (MB) | RSS before / after (MB) |",
              "|---:|---:|---:|---:|---:|---|",
              f"| {b['faces']} | {b['input_mb']} | {b['max_batch']} | {b['numpy_peak_during_call_mb']} | "
              f"{b['one_float_tensor_of_all_mb']} | {b['rss_before_mb']:.0f} / {b['rss_after_mb']:.0f} |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0, help="length of the capture run (default 1)")
    ap.add_argument("--sample-s", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    ap.add_argument("--sizes", type=int, default=200, help="distinct frame sizes for the detector (default 200)")
    ap.add_argument("--max-side", type=int, nargs="*", default=[1280],
                    help="fixed RetinaFace input sizes to run the frame sizes at too, beside the automatic one "
                         "(default 1280)")
    ap.add_argument("--faces", type=int, default=4000, help="faces in the one Scorer.score call (default 4000)")
    ap.add_argument("--clip", type=Path, default=None, help="a video to replay instead of the one made here")
    ap.add_argument("--photos", type=Path, default=Path("../shared/data/lfw-dev"),
                    help="<person>/*.jpg photos the clip is made of (default ../shared/data/lfw-dev; the sample "
                         "clip of examples/make_sample_video.py where there are none)")
    ap.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not (args.minutes > 0 and args.sample_s > 0 and args.sizes >= 8 and args.faces >= 1):
        ap.error("--minutes and --sample-s must be positive, --sizes at least 8, --faces at least 1")
    if args.clip is not None and not args.clip.is_file():
        ap.error(f"--clip {args.clip}: no such video")
    command = " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="fiqa-soak-") as tmp:
        work = Path(tmp)
        if args.clip is not None:
            clip = args.clip
        elif any(args.photos.glob("*/*.jpg")):
            clip = people_clip(args.photos, work / "people.avi")
        else:
            clip = sample_clip(work / "sample.avi")
        print(f"capture run: {args.minutes} min on {clip.name}", flush=True)
        capture = capture_soak(clip, args.minutes, args.sample_s, args.threads, work)
        print({k: v for k, v in capture.items() if k != "samples"}, flush=True)
    sizes = []
    for max_side in [None, *args.max_side]:
        print(f"detector on {args.sizes} frame sizes at max_side {max_side or 'auto'}", flush=True)
        sizes.append(frame_sizes_soak(args.sizes, args.threads, max_side))
        print({k: v for k, v in sizes[-1].items() if k != "rows"}, flush=True)
    print(f"Scorer.score on {args.faces} faces", flush=True)
    batch = batch_soak(args.faces, args.threads)
    print(batch, flush=True)
    result = {"benchmark": "soak: memory over time, frame sizes and one huge batch", "command": command,
              "machine": {**machine_basics(), **versions()}, "capture": capture, "frame_sizes": sizes,
              "batch": batch}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (args.out / "soak.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
