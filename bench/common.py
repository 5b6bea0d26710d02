"""What every benchmark records about the machine it ran on (imported by the bench scripts, run from bench/)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


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
