"""Helpers shared by the tests of the examples and of the capture pipeline."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from fiqa_sdk.detection import Detection, Detector

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str, file: str):
    """examples/ is not a package: load a script as a module (registered, as dataclasses require)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class UpsideDownLandmarks(Detector):
    """Real detections with the mouth landmarks moved above the eyes: landmarks no pose proxy can read, so the
    pipeline skips the face."""

    name = "upside-down"

    def __init__(self, inner: Detector):
        self.inner = inner

    def _detect_bgr(self, frame):
        out = []
        for d in self.inner.detect(frame):
            lm = d.landmarks.copy()
            lm[3:, 1] = lm[:2, 1].min() - 20
            out.append(Detection(d.box, lm, d.score))
        return out
