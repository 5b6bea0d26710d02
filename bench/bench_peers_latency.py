"""One face, one thread: the default bundle as its users call it, beside the published edge FIQA peers.

    python bench/bench_peers_latency.py [--runs 300] [--rounds 4] [--bundle DIR ...] [--old-tree DIR]

``Scorer(bundle, detector=None, threads=1).score(face)`` (everything the SDK does per aligned face: checks,
preprocessing, the engine, mirror averaging where the manifest asks for it, the score scale) against LightQNet
(width 1.0 and 0.25, TensorFlow Session) and SDD-FIQA (MNN) on their own runtimes (``bench/peers``, each in its own
virtual environment: ``bash bench/peers/setup_peers.sh``; a peer whose runtime is missing is listed as skipped).
The peers' worker times only their engine call, the number most in their favour. Rounds interleave the methods,
so a change of load on the machine falls on all of them; medians over all rounds. ``--old-tree DIR`` adds the
Scorer of an earlier commit's code to the rounds (``git archive <commit> sdk runtimes | tar -x -C DIR``; see
``profile_score.py``), for before/after in one run. Writes ``results/peers_latency.json`` / ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
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
SMALL = "lightqnet-dm025"  # the second bar: at most 1.0x the smaller LightQNet


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
    ap.add_argument("--old-tree", type=Path, default=None,
                    help="also time the Scorer of the code in this folder (an earlier commit's sdk/ and runtimes/)")
    ap.add_argument("--old-label", default="code before the lean path", help="what --old-tree is, for the table")
    ap.add_argument("--note", default="", help="free text appended to the Markdown (e.g. what else ran)")
    args = ap.parse_args(argv)
    bundles = args.bundle or [ROOT / "sdk/fiqa_sdk/bundles/default-android-arm64"]
    machine = machine_basics()
    scorers = {}
    if args.old_tree:  # imported before this checkout's packages, then set aside (profile_score.old_scorer)
        from profile_score import old_scorer

        old = old_scorer(args.old_tree, bundles[0])
        scorers[f"fiqa-sdk {bundles[0].name}, {args.old_label}: Scorer.score"] = old
    import peers
    from fiqa_sdk import Scorer

    face = a_face()
    for s in scorers.values():
        time_scorer(s, face, 50)  # warm-up
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
    small = rows.get(SMALL, {}).get("median_ms")
    for r in rows.values():
        if ref and "median_ms" in r:
            r["vs_lightqnet_1.0"] = r["median_ms"] / ref
        if small and "median_ms" in r:
            r["vs_lightqnet_0.25"] = r["median_ms"] / small
    record = {"runs": args.runs, "rounds": args.rounds, "methods": rows, "machine": machine,
              "loadavg_at_end": [round(v, 2) for v in os.getloadavg()], "note": args.note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = ["# One face, one thread: fiqa-sdk beside the published edge FIQA models", "",
             f"{args.rounds} interleaved rounds of {args.runs} calls; medians (per round for the peers, whose worker "
             "times its engine call alone).", "",
             "| model, as its users call it | median per face | vs LightQNet 1.0 | vs LightQNet 0.25 |",
             "|---|---:|---:|---:|"]
    for r in rows.values():
        if "skipped" in r:
            lines.append(f"| {r['label']} | {r['skipped']} | | |")
        else:
            rel = [f"{r[k]:.2f}x" if k in r else "n/a" for k in ("vs_lightqnet_1.0", "vs_lightqnet_0.25")]
            lines.append(f"| {r['label']} | {r['median_ms']:.3f} ms | {rel[0]} | {rel[1]} |")
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, load average (1, 5, 15 min) at start "
              f"{machine['loadavg_at_start']}, at end {record['loadavg_at_end']}.", ""]
    if args.note:
        lines += [args.note, ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
