"""Real face photos that installed pip packages already ship: demos and tests without downloads or ../shared.

Each photo is located on disk with :func:`importlib.util.find_spec` on the top-level package, which does
not execute the package: importing insightface, matplotlib or scikit-image would cost seconds (or fail,
for insightface installed with ``--no-deps``), and we only need a file path.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


class SampleUnavailable(FileNotFoundError):
    """The package that ships a sample photo is not installed (the message names the pip command)."""


@dataclass(frozen=True)
class SamplePhoto:
    """Where a shipped photo lives and what is in it (``faces``/``person`` were established by looking)."""

    name: str
    package: str  # top-level import name
    relpath: str  # inside the package folder
    install: str  # pip command that provides it
    faces: int  # people whose face is visible
    person: str | None  # who, for single-person photos
    description: str


SAMPLES: dict[str, SamplePhoto] = {s.name: s for s in (
    SamplePhoto("t1", "insightface", "data/images/t1.jpg", "pip install --no-deps insightface==2.1", 6, None,
                "1280x886 group photo, six people around a poker table, several faces turned or tilted"),
    SamplePhoto("tom_hanks", "insightface", "data/images/Tom_Hanks_54745.png",
                "pip install --no-deps insightface==2.1", 1, "Tom_Hanks",
                "112x112 grayscale-looking close-up, face fills the frame"),
    SamplePhoto("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "pip install matplotlib", 1,
                "Grace_Hopper", "512x600 frontal official portrait with glasses"),
    SamplePhoto("astronaut", "skimage", "data/astronaut.png", "pip install scikit-image", 1, "Eileen_Collins",
                "512x512 portrait of astronaut Eileen Collins, face ~100 px"),
)}


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def sample_path(name: str) -> Path:
    """Path of one shipped photo; :class:`SampleUnavailable` naming the pip command when it is not installed."""
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; known: {sorted(SAMPLES)}")
    s = SAMPLES[name]
    root = _package_dir(s.package)
    if root is None:
        raise SampleUnavailable(f"sample {name!r} ships with the '{s.package}' package, which is not installed; "
                                f"install it with: {s.install}")
    path = root / s.relpath
    if not path.is_file():
        raise SampleUnavailable(f"sample {name!r} should be at {path} but is not (a different '{s.package}' "
                                f"version?); reinstall with: {s.install}")
    return path


def sample_images() -> dict[str, Path]:
    """Every shipped sample photo present in this environment, by name (possibly empty)."""
    found = {}
    for name in SAMPLES:
        try:
            found[name] = sample_path(name)
        except SampleUnavailable:
            continue
    return found


def load_sample(name: str) -> np.ndarray:
    """Decode a shipped sample photo to an HxWx3 BGR uint8 array."""
    path = sample_path(name)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SampleUnavailable(f"OpenCV could not decode {path}; the file may be corrupt: "
                                f"reinstall with: {SAMPLES[name].install}")
    return img
