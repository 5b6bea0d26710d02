"""What every benchmark records about the machine it ran on (imported by the bench scripts, run from bench/)."""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def label_set_missing(labels) -> str | None:
    """Why a ``fiqa-labels`` directory cannot be used (None when it can): the benches that need one say this."""
    return None if (Path(labels) / "labels.npz").is_file() else \
        f"no label set at {labels} (make it with fiqa-labels, or pass --labels)"


def machine_basics() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version()}


def summarise(samples: list[float]) -> dict:
    t = np.asarray(samples)
    return {"median_ms": round(float(np.median(t)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "min_ms": round(float(t.min()), 3), "runs": len(t)}


def time_interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int, rounds: int = 4) -> dict:
    """Time every callable in ``rounds`` interleaved passes of ``runs // rounds`` calls, so a load change on the
    shared machine hits all configurations alike instead of whichever happened to run then."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for key, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[key].append((time.perf_counter() - t0) * 1000)
    return {k: summarise(v) for k, v in samples.items()}
