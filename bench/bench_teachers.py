"""Size and speed of every registered model (teachers first of all): params, MACs, CPU timings.

For each name in ``list_models()``: parameter count and MACs per image at the native input (meta device, exact).
Small models (< --small-params parameters) also get a training-step smoke timing (forward + backward, batch 8,
train mode) and a forward latency (batch 1, eval mode), each the median of --runs runs after one warm-up.
Large (paper-size) models are built for real and get a batch-1 forward latency (warm-up + median of up to 3)
if one forward is estimated to take < 10 s (from the best MAC rate the small models reached).
Writes ``bench/results/teachers.json`` and ``teachers.md``.

    python bench/bench_teachers.py [--runs 5] [--threads N] [--models vit_fiqa_tiny ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fiqa_compile.models import create_model, list_models
from fiqa_compile.models.profile import count_params, profile_model

RESULTS = Path(__file__).resolve().parent / "results"
MAX_SINGLE_FORWARD_S = 10.0


def _scalar(out: Any) -> torch.Tensor:
    """Sum of the means of every float tensor a forward returned (tensor, tuple/NamedTuple or dict)."""
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    parts = list(out.values()) if isinstance(out, dict) else list(out)
    tensors = [_scalar(p) for p in parts if isinstance(p, (torch.Tensor, tuple, list, dict))]
    if not tensors:
        raise TypeError(f"forward returned no tensors: {type(out).__name__}")
    return torch.stack(tensors).sum()


def _median_ms(fn: Callable[[], None], runs: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitive caches)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _profile(name: str) -> tuple[Any, str]:
    """Profile on the meta device; a model whose forward needs real data (e.g. ``.item()``) is profiled on the
    CPU instead, and the row says so."""
    try:
        return profile_model(name), "meta"
    except (NotImplementedError, RuntimeError) as e:
        print(f"[bench] {name}: meta-device profiling failed ({type(e).__name__}), profiling on cpu", file=sys.stderr)
        return profile_model(name, device="cpu"), "cpu"


def bench_model(name: str, runs: int, small_params: int, mac_rate: float | None) -> dict[str, Any]:
    prof, where = _profile(name)
    row: dict[str, Any] = {**prof.as_dict(), "mparams": prof.params / 1e6, "gmacs": prof.macs / 1e9,
                           "small": prof.params < small_params, "profiled_on": where}
    t0 = time.perf_counter()
    model = create_model(name)
    row["build_s"] = time.perf_counter() - t0
    x1 = torch.randn(1, *prof.input_shape)
    if row["small"]:
        x8 = torch.randn(8, *prof.input_shape)

        def train_step() -> None:
            model.zero_grad(set_to_none=True)
            _scalar(model(x8)).backward()

        model.train()
        row["train_step_b8_ms"] = _median_ms(train_step, runs)
        model.eval()
        with torch.no_grad():
            row["forward_b1_ms"] = _median_ms(lambda: model(x1), runs)
        return row
    model.eval()
    estimate = prof.macs / mac_rate if mac_rate else None
    row["forward_b1_estimate_s"] = estimate
    if estimate is not None and estimate < MAX_SINGLE_FORWARD_S:
        with torch.no_grad():  # warm-up + median of up to 3 while that stays cheap (a cold run is mostly noise)
            row["forward_b1_ms"] = _median_ms(lambda: model(x1), runs=max(1, min(runs, 3, int(5 / estimate))))
    else:
        row["skipped"] = "no MAC-rate estimate" if estimate is None else f"estimated {estimate:.1f} s > 10 s"
    return row


def count_params_meta(name: str) -> int:
    """Parameter count without allocating weights (for ordering: small models are timed first). A model that
    cannot be built here sorts first and then fails, reported, in :func:`bench_model`."""
    try:
        with torch.device("meta"):
            return count_params(create_model(name))
    except Exception:  # noqa: BLE001
        return 0


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# Teacher / model sizes and CPU timings", "",
        f"torch {result['torch']}, {result['threads']} threads, {result['cpu']} ({result['cpu_count']} cores, shared "
        f"with other jobs, load average {result['load_avg_1min_at_end']} at the end: timings are indicative). MACs per image at the native input (FlopCounterMode FLOPs / 2; "
        "matmuls and convs only). Train step = forward + backward, batch 8, median of "
        f"{result['runs']}; forward = batch 1, eval, median of {result['runs']} (paper size: of up to 3).", "",
        "| model | input | params (M) | GMACs | train step b8 (ms) | forward b1 (ms) | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in result["models"]:
        if "error" in r:
            lines.append(f"| {r['name']} | - | - | - | - | - | error: {r['error']} |")
            continue
        c, h, w = r["input_shape"]
        note = r.get("skipped", "" if r["small"] else "large: no train step")
        lines.append(f"| {r['name']} | {c}x{h}x{w} | {r['mparams']:.2f} | {r['gmacs']:.3f} | "
                     f"{_fmt(r.get('train_step_b8_ms'), '.1f')} | {_fmt(r.get('forward_b1_ms'), '.1f')} | {note} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--small-params", type=float, default=20e6, help="below this many params: full timings")
    ap.add_argument("--models", nargs="*", default=None, help="subset of registered names (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.models or list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        ap.error(f"unknown models {unknown}; registered: {list_models()}")
    # small models first, so their measured MAC rate can vet the single forward of the big ones
    order = sorted(names, key=lambda n: count_params_meta(n))
    rows, mac_rate, failed = [], None, False
    for name in order:
        try:
            row = bench_model(name, args.runs, int(args.small_params), mac_rate)
        except Exception as e:  # noqa: BLE001 - a model that cannot be benchmarked is reported, not hidden
            print(f"[bench] {name}: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append({"name": name, "error": f"{type(e).__name__}: {e}"})
            failed = True
            continue
        if row["small"] and row.get("forward_b1_ms"):
            rate = row["macs"] / (row["forward_b1_ms"] / 1e3)
            mac_rate = rate if mac_rate is None else max(mac_rate, rate)  # best rate seen: least pessimistic
        rows.append(row)
        print(f"[bench] {name}: {row['mparams']:.2f} M params, {row['gmacs']:.3f} GMACs, "
              f"train b8 {row.get('train_step_b8_ms')} ms, fwd b1 {row.get('forward_b1_ms')} ms")
    result = {"load_avg_1min_at_end": round(os.getloadavg()[0], 2), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "cpu": platform.processor() or platform.machine(), "runs": args.runs, "models": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teachers.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "teachers.md")
    print(f"[bench] wrote {args.out / 'teachers.json'} and teachers.md")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
