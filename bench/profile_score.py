"""Where the time of ``Scorer(detector=None, threads=1).score(face)`` goes, for one 112x112 face.

    python bench/profile_score.py [--bundle DIR] [--blocks 200] [--block 25] [--old-tree DIR]

Each step of the call is timed on its own: the whole call, the bare interpreter ``invoke`` (input already in place)
and the Python around it -- the checks, the float path (BGR->RGB, float conversion, normalisation, NCHW transpose,
quantisation to the int8 input: the old arithmetic, and today's table-driven ``faces_to_tensor``), the lean path's
table encoder, ``set_tensor``/``get_tensor``, dequantisation, the score scale. Every step is timed right after an
untimed ``invoke``, with the caches as a real call leaves them. Steps take turns in blocks of ``--block`` calls, so
a change of load on the shared machine falls on all of them; medians in microseconds.

``--old-tree DIR``: also time the Scorer of an earlier commit in the same run, e.g. the one before the lean path::

    mkdir -p /tmp/old && git archive HEAD sdk runtimes | tar -x -C /tmp/old
    python bench/profile_score.py --old-tree /tmp/old

(its packages are imported first, from ``DIR/sdk`` and ``DIR/runtimes``, then set aside for this checkout's).
Writes ``results/profile_score.json`` / ``.md``.
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


def old_scorer(tree: Path, bundle: Path):
    """A Scorer of the code in ``tree``, loaded and warmed before this checkout's packages are imported."""
    mine = [p for p in sys.path]
    sys.path[:0] = [str(tree / "sdk"), str(tree / "runtimes")]
    for name in [m for m in sys.modules if m.split(".")[0] in ("fiqa_sdk", "fiqa_runtimes")]:
        del sys.modules[name]
    from fiqa_sdk import Scorer

    scorer = Scorer(bundle, detector=None, threads=1)
    if "/sdk/" not in sys.modules["fiqa_sdk"].__file__ or not sys.modules["fiqa_sdk"].__file__.startswith(str(tree)):
        raise SystemExit(f"--old-tree {tree}: fiqa_sdk came from {sys.modules['fiqa_sdk'].__file__}")
    for name in [m for m in sys.modules if m.split(".")[0] in ("fiqa_sdk", "fiqa_runtimes")]:
        del sys.modules[name]  # its objects keep their own modules; this checkout's are imported afresh
    sys.path[:] = mine
    return scorer


def paired_overhead(scorer, face: np.ndarray, blocks: int, block: int, interleave=None) -> list[float]:
    """Per call of ``scorer.score(face)``: its time minus that of the interpreter invoke inside it (microseconds).
    ``interleave=(other, its_samples)``: take turns with another Scorer, appending its samples to its list."""
    runs = [(scorer, [])] + ([(interleave[0], interleave[1])] if interleave else [])
    timed = []
    for s, _ in runs:
        interp = s._engine._interp
        inner = interp.invoke
        box = [0.0]

        def invoke(inner=inner, box=box):
            t0 = time.perf_counter()
            inner()
            box[0] = time.perf_counter() - t0
        interp.invoke = invoke  # an instance attribute: the backend's self._interp.invoke() finds it
        timed.append((s, box, interp))
    try:
        for _ in range(blocks):
            for (s, box, _), (_, out) in zip(timed, runs):
                for _ in range(block):
                    t0 = time.perf_counter()
                    s.score(face)
                    out.append((time.perf_counter() - t0 - box[0]) * 1e6)
    finally:
        for _, _, interp in timed:
            del interp.invoke
    return runs[0][1]


def old_faces_to_tensor(faces: np.ndarray) -> np.ndarray:
    """The float path as it was before the lookup tables: BGR->RGB, astype, subtract, divide, NCHW copy."""
    rgb = faces[..., ::-1].astype(np.float32)
    x = (rgb - 127.5) / 127.5
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "sdk/fiqa_sdk/bundles/default-android-arm64")
    ap.add_argument("--blocks", type=int, default=200, help="turns per step (default 200)")
    ap.add_argument("--block", type=int, default=25, help="calls per turn (default 25)")
    ap.add_argument("--old-tree", type=Path, default=None, help="also time the Scorer of the code in this folder")
    ap.add_argument("--out", type=Path, default=RESULTS / "profile_score")
    args = ap.parse_args(argv)
    old = old_scorer(args.old_tree, args.bundle) if args.old_tree else None
    from bench_peers_latency import a_face
    from fiqa_runtimes.litert_backend import _dequantize, _quantize
    from fiqa_sdk import Scorer
    from fiqa_sdk.preprocess import faces_to_tensor
    from fiqa_sdk.scorer import _check_faces

    face = a_face()
    scorer = Scorer(args.bundle, detector=None, threads=1)
    engine = scorer._engine
    if not hasattr(engine, "_interp"):
        raise SystemExit(f"{args.bundle} does not run on LiteRT here ({scorer.info.backend})")
    interp, din, dout = engine._interp, engine._in[0], engine._out[0]
    batch = _check_faces(face)
    x = faces_to_tensor(batch)
    q = np.ascontiguousarray(_quantize(x, din))
    interp.set_tensor(din["index"], q)
    interp.invoke()
    yq = interp.get_tensor(dout["index"])
    y = _dequantize(yq, dout)
    lean = scorer._encoder  # the lean path's FaceEncoder (None: the float path)

    steps = {}
    if old is not None:
        old_name = f"old Scorer.score(face) ({args.old_tree})"
        steps[old_name] = lambda: old.score(face)
    steps.update({
        "Scorer.score(face), whole call": lambda: scorer.score(face),
        "interpreter.invoke() alone": interp.invoke,
        "nothing (a no-op: the floor of timing a step right after an invoke)": lambda: None,
        "_check_faces (validation)": lambda: _check_faces(face),
        "float path, old arithmetic: BGR->RGB, astype, normalise, NCHW": lambda: old_faces_to_tensor(batch),
        "float path, faces_to_tensor now (float table, NCHW)": lambda: faces_to_tensor(batch),
        "float path: quantise float32 -> int8": lambda: _quantize(x, din),
        "float path: engine.run(float NCHW) (quantise, set, invoke, get, dequantise)": lambda: engine.run({"x": x}),
        "set_tensor(int8 input)": lambda: interp.set_tensor(din["index"], q),
        "get_tensor(int8 output)": lambda: interp.get_tensor(dout["index"]),
        "dequantise int8 -> float (arithmetic)": lambda: _dequantize(yq, dout),
        "dequantise int8 -> float (256-entry table)": lambda: engine._outputs[0][2].take(yq.view(np.uint8)),
        "bundle.to_0_100 (score scale)": lambda: scorer.bundle.to_0_100(y),
    })
    if lean is not None:
        buf = np.zeros(lean.shape(1), lean.table.dtype)
        steps["lean: FaceEncoder.encode, uint8 BGR -> int8 RGB planes (table)"] = lambda: lean.encode(batch, buf)
        steps["lean: engine.run_quantized (encode, set, invoke, get, dequantise)"] = \
            lambda: engine.run_quantized(1, lambda b: lean.encode(batch, b))
    for fn in steps.values():
        for _ in range(100):
            fn()
    # Each call is timed right after an untimed invoke (of its own interpreter), as in back-to-back calls: the engine
    # has just run through ~1 MB of weights and activations, so the Python steps find little of their own in the
    # caches (timed back to back instead, each looks 3-5 times cheaper than it is).
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.blocks):
        for name, fn in steps.items():
            t = samples[name]
            invoke = old._engine._interp.invoke if old is not None and name == old_name else interp.invoke
            for _ in range(args.block):
                invoke()
                t0 = time.perf_counter()
                fn()
                t.append((time.perf_counter() - t0) * 1e6)
    rows = {k: float(np.median(v)) for k, v in samples.items()}
    # The Python around the engine, call by call: each call's time minus that of the invoke inside it (timed by a
    # wrapper on the interpreter), so the engine's own jitter under load drops out of the difference.
    if old is None:
        around = {"new": paired_overhead(scorer, face, args.blocks, args.block)}
    else:  # taking turns
        new: list[float] = []
        around = {"old": paired_overhead(old, face, args.blocks, args.block, interleave=(scorer, new)), "new": new}
    record = {"bundle": str(args.bundle), "backend": scorer.info.backend, "lean_path": lean is not None,
              "blocks": args.blocks, "block": args.block, "median_us": rows,
              "around_invoke_median_us": {k: float(np.median(v)) for k, v in around.items()},
              "machine": machine_basics()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [f"# Scorer.score, one face, one thread: where the time goes ({args.bundle.name}, {scorer.info.backend})",
             "", f"Each step timed right after an untimed invoke (the caches as a real call finds them); steps "
             f"take turns, {args.blocks} turns of {args.block} calls each; medians. Lean path "
             f"{'on' if lean is not None else 'off'}.", "", "| step | median |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} us |" for k, v in rows.items()]
    med = record["around_invoke_median_us"]
    lines += ["", "Python around the engine (each call minus the invoke inside it, paired per call): "
              + "; ".join(f"{k}: {v:.1f} us" for k, v in med.items()) + ".",
              "", f"Machine: {record['machine']['cpu']}, load average at start {record['machine']['loadavg_at_start']}.",
              ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
