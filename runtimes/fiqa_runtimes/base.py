"""The Backend interface and the registry that picks one by name or by what is installed."""
from __future__ import annotations

import importlib
import importlib.util
import logging
from abc import ABC, abstractmethod
from enum import Enum
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class ModelFormat(str, Enum):
    ONNX = "onnx"
    TFLITE = "tflite"


class BackendUnavailable(RuntimeError):
    """The engine a backend wraps is not installed (or has no device to run on)."""


class Backend(ABC):
    """A loaded model: float32 arrays in, float32 arrays out, names as in the model file."""

    name: str = "?"
    formats: tuple[ModelFormat, ...] = ()

    @property
    @abstractmethod
    def input_names(self) -> list[str]: ...

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs are float32 in the model's declared layout; outputs come back float32."""

    def close(self) -> None:
        """Release what the engine holds outside Python's memory (TensorRT's device buffers); a no-op for CPU
        runtimes, whose memory the garbage collector frees."""

    def run1(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run a single-input model."""
        if len(self.input_names) != 1:
            raise ValueError(f"{self.name}: model has inputs {self.input_names}; call run() with a dict")
        return self.run({self.input_names[0]: x})


class NamedIOBackend(Backend):
    """A backend whose engine lists its input and output names once, at load: they live in ``_inputs`` and
    ``_outputs``, which the subclass's ``__init__`` sets."""

    _inputs: list[str]
    _outputs: list[str]

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)


# name -> (module that must be importable, factory path "module:Class", formats)
_REGISTRY: dict[str, tuple[str, str, tuple[ModelFormat, ...]]] = {}
# Preference order for "auto" per format: fastest first.
_AUTO_ORDER = ["tensorrt", "litert", "tflite-runtime", "onnxruntime", "opencv"]


_HINTS: dict[str, str] = {}


def register_backend(name: str, requires: str, factory: str, formats: tuple[ModelFormat, ...],
                     install_hint: str | None = None) -> None:
    """``install_hint`` tells a user who asked for this backend by name how to get its engine."""
    _REGISTRY[name] = (requires, factory, formats)
    if install_hint:
        _HINTS[name] = install_hint


register_backend("onnxruntime", "onnxruntime", "fiqa_runtimes.onnxruntime_backend:OnnxRuntimeBackend",
                 (ModelFormat.ONNX,), install_hint="pip install onnxruntime (fiqa-sdk's 'onnx' extra)")
register_backend("opencv", "cv2", "fiqa_runtimes.opencv_backend:OpenCVDnnBackend", (ModelFormat.ONNX,))
register_backend("litert", "ai_edge_litert", "fiqa_runtimes.litert_backend:LiteRTBackend", (ModelFormat.TFLITE,),
                 install_hint="pip install ai-edge-litert (fiqa-sdk's 'tflite' extra)")
register_backend("tflite-runtime", "tflite_runtime", "fiqa_runtimes.litert_backend:TfliteRuntimeBackend",
                 (ModelFormat.TFLITE,))
register_backend("tensorrt", "tensorrt", "fiqa_runtimes.tensorrt_backend:TensorRTBackend", (ModelFormat.ONNX,),
                 install_hint="TensorRT's Python bindings come with JetPack on a Jetson (create the venv with "
                              "--system-site-packages to see them), or from NVIDIA's 'tensorrt' wheels on a CUDA machine")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends(fmt: ModelFormat | str | None = None) -> list[str]:
    """Backends whose engine is importable here, in 'auto' preference order."""
    fmt = ModelFormat(fmt) if fmt is not None else None
    names = [n for n in _AUTO_ORDER if n in _REGISTRY] + [n for n in _REGISTRY if n not in _AUTO_ORDER]
    return [n for n in names
            if _installed(_REGISTRY[n][0]) and (fmt is None or fmt in _REGISTRY[n][2])]


def _factory(name: str) -> Callable[..., Backend]:
    module, cls = _REGISTRY[name][1].split(":")
    return getattr(importlib.import_module(module), cls)


def check_threads(threads: object) -> None:
    """``threads`` as every backend takes it: a positive integer, or None for the engine's own choice."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")


def load_backend(model: bytes | str, fmt: ModelFormat | str, backend: str = "auto", **options) -> Backend:
    """Load ``model`` (bytes or a path) with the named backend, or the best installed one for ``fmt``."""
    check_threads(options.get("threads"))
    fmt = ModelFormat(fmt)
    if backend == "auto":  # the best installed one that can actually start (TensorRT without a GPU cannot)
        candidates = available_backends(fmt)
        if not candidates:
            wanted = {ModelFormat.ONNX: "onnxruntime (pip install onnxruntime: fiqa-sdk's 'onnx' extra)",
                      ModelFormat.TFLITE: "ai-edge-litert (pip install ai-edge-litert: fiqa-sdk's 'tflite' extra)"}[fmt]
            raise BackendUnavailable(f"no runtime installed that runs {fmt.value} models; install {wanted}")
        reasons = []
        for name in candidates:
            try:
                return load_backend(model, fmt, name, **options)
            except BackendUnavailable as e:
                log.warning("backend %s unavailable (%s); trying the next one", name, e)
                reasons.append(f"{name}: {e}")
        raise BackendUnavailable(f"no installed backend could load the {fmt.value} model: {'; '.join(reasons)}")
    if backend not in _REGISTRY:
        raise ValueError(f"unknown backend {backend!r}; known: {sorted(_REGISTRY)}")
    requires, _, formats = _REGISTRY[backend]
    if fmt not in formats:
        raise ValueError(f"backend {backend!r} runs {[f.value for f in formats]} models, not {fmt.value}")
    if not _installed(requires):
        hint = _HINTS.get(backend, f"pip install {requires}")
        raise BackendUnavailable(f"backend {backend!r} needs the Python module {requires!r}, which is not installed: {hint}")
    return _factory(backend)(model, **options)


def read_model(model: bytes | str) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()
