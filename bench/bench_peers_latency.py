"""One face, one thread: the default bundle as its users call it, beside the published edge FIQA peers.

    python bench/bench_peers_latency.py [--runs 300] [--rounds 4] [--bundle DIR ...]

``Scorer(bundle, detector=None, threads=1).score(face)`` (everything the SDK does per aligned face: checks,
preprocessing, the engine, mirror averaging where the manifest asks for it, the score scale) against LightQNet
(width 1.0 and 0.25, TensorFlow Session) and SDD-FIQA (MNN) on their own runtimes (``bench/peers``, each in its own
virtual environment: ``bash bench/peers/setup_peers.sh``; a peer whose runtime is missing is listed as skipped).
The peers' worker times only their engine call, the number most in their favour. Rounds interleave the methods,
so a change of load on the machine falls on all of them; medians over all rounds. Writes
``results/peers_latency.json`` / ``.md``.
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
PEER_NAMES = {"lightqnet-dm100": "LightQNet width 1.0 (TensorFlow 2.19)",
              "lightqnet-dm025": "LightQNet width 0.25 (TensorFlow 2.19)",
              "sdd_fiqa": "SDD-FIQA MobileFaceNet (MNN 3.6.1)"}
REFERENCE = "lightqnet-dm100"


def a_face() -> np.ndarray:
    """A real aligned face (the shipped astronaut photo), so the SDK's checks see what they always see."""
    from fiqa_sdk import align_face, create_detector, load_sample

    frame = load_sample("astronaut")
    det = create_detector("retinaface", threads=1)
    faces = det(frame)
    if not faces:
        raise RuntimeError("no face found in the astronaut sample")
    return align_face(frame, faces[0].landmarks)


def time_scorer(scorer, face: np.ndarray, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        scorer.score(face)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, action="append", default=None,
                    help="bundle folder, repeatable (default: the embedded android-arm64 bundle, LiteRT INT8)")
    ap.add_argument("--runs", type=int, default=300, help="calls per method per round (default 300)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    ap.add_argument("--out", type=Path, default=RESULTS / "peers_latency", help="output stem")
    args = ap.parse_args(argv)
    import peers
    from fiqa_sdk import Scorer

    bundles = args.bundle or [ROOT / "sdk/fiqa_sdk/bundles/default-android-arm64"]
    face = a_face()
    scorers = {}
    for b in bundles:
        s = Scorer(b, detector=None, threads=1)
        scorers[f"fiqa-sdk {b.name}: Scorer.score ({s.info.precision}, {s.info.backend}"
                 f"{', face + mirror' if s.info.mirror_average else ', one pass'})"] = s
        time_scorer(s, face, 50)  # warm-up
    samples: dict[str, list[float]] = {k: [] for k in [*scorers, *PEER_NAMES]}
    skipped: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, s in scorers.items():
            samples[name] += time_scorer(s, face, args.runs)
        for name in PEER_NAMES:
            if name in skipped:
                continue
            r = peers.peer_latency(name, runs=args.runs)
            if isinstance(r, str):
                skipped[name] = r
            else:
                samples[name].append(float(r["median_ms"]))  # the worker reports its round's median
    rows = {}
    for name, t in samples.items():
        if name in skipped:
            rows[name] = {"label": PEER_NAMES[name], "skipped": skipped[name]}
        elif t:
            rows[name] = {"label": PEER_NAMES.get(name, name), "median_ms": float(np.median(t)), "samples": len(t)}
    ref = rows.get(REFERENCE, {}).get("median_ms")
    for r in rows.values():
        if ref and "median_ms" in r:
            r["vs_lightqnet_1.0"] = r["median_ms"] / ref
    record = {"runs": args.runs, "rounds": args.rounds, "methods": rows, "machine": machine_basics()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = ["# One face, one thread: fiqa-sdk beside the published edge FIQA models", "",
             f"{args.rounds} interleaved rounds of {args.runs} calls; medians (per round for the peers, whose worker "
             "times its engine call alone).", "", "| model, as its users call it | median per face | vs LightQNet 1.0 |",
             "|---|---:|---:|"]
    for r in rows.values():
        if "skipped" in r:
            lines.append(f"| {r['label']} | {r['skipped']} | |")
        else:
            rel = f"{r['vs_lightqnet_1.0']:.2f}x" if "vs_lightqnet_1.0" in r else "n/a"
            lines.append(f"| {r['label']} | {r['median_ms']:.3f} ms | {rel} |")
    lines += ["", f"Machine: {record['machine']['cpu']}, load average at start {record['machine']['loadavg_at_start']}.", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
