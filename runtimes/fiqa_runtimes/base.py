"""The Backend interface and the registry that picks one by name or by what is installed."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)


class ModelFormat(str, Enum):
    ONNX = "onnx"
    TFLITE = "tflite"


class BackendUnavailable(RuntimeError):
    """The engine a backend wraps is not installed (or has no device to run on)."""


class ModelLoadError(BackendUnavailable):
    """The engine is installed and starts, but cannot load this model: an ONNX opset or a TFLite operator newer
    than it supports, or a file it cannot parse. For this model the backend is as unusable as a missing one, so
    ``auto`` moves on to the next (a bundle's other model, or another engine) rather than stopping there."""


def quantize_affine(x: np.ndarray, dtype: type, scale: float, zero_point: int) -> np.ndarray:
    """Float values -> the integers of an affine-quantised tensor: ``round(x / scale + zero_point)`` (half to even),
    saturated to the dtype's range. In the input's own float precision (float32 in, float32 arithmetic)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


@dataclass(frozen=True)
class QuantizedInput:
    """A model input that takes integers (a full-INT8 TFLite's int8 faces): what a caller needs to quantise its data
    itself and hand the integers to :meth:`Backend.run_quantized`, with no float tensor on the way. ``shape``: the
    input at batch 1 as the model declares it (so also its layout, e.g. ``(1, 3, 112, 112)`` for NCHW)."""

    name: str
    dtype: type
    scale: float
    zero_point: int
    shape: tuple[int, ...]

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """What :meth:`Backend.run` does to a float input of this tensor before the engine sees it."""
        return quantize_affine(x, self.dtype, self.scale, self.zero_point)


class Backend(ABC):
    """A loaded model: float32 arrays in, float32 arrays out, names as in the model file.

    One backend may be shared by threads. Most engines keep a call's tensors inside the loaded model (LiteRT's
    interpreter between set_tensor and get_tensor, OpenCV's net between setInput and forward, TensorRT's context
    and buffers), so :meth:`run` lets one call at a time in; an engine whose loaded model takes concurrent calls
    sets ``runs_concurrently``. Subclasses call ``super().__init__()`` and implement :meth:`_infer`.
    """

    name: str = "?"
    formats: tuple[ModelFormat, ...] = ()
    runs_concurrently: bool = False

    def __init__(self) -> None:
        self._run_lock: contextlib.AbstractContextManager = (
            contextlib.nullcontext() if self.runs_concurrently else threading.Lock())

    @property
    @abstractmethod
    def input_names(self) -> list[str]: ...

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs are float32 in the model's declared layout; outputs come back float32, arrays of
        the caller's own (never views of engine memory that a later call overwrites). Safe from several threads."""
        with self._run_lock:
            return self._infer(inputs)

    @abstractmethod
    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`run`'s work, entered by one thread at a time unless ``runs_concurrently``."""

    @property
    def quantized_input(self) -> QuantizedInput | None:
        """The model's one input when the engine takes it as integers (then :meth:`run_quantized` feeds it);
        ``None`` for float inputs, several inputs, or engines that quantise inside the graph (ONNX Q/DQ)."""
        return None

    def run_quantized(self, batch: int, fill: Callable[[np.ndarray], None]) -> dict[str, np.ndarray]:
        """Run ``batch`` rows of :attr:`quantized_input` without a float round trip: ``fill(buffer)`` writes the
        integers into a buffer the backend keeps for that batch size (shape ``(batch, *quantized_input.shape[1:])``,
        its dtype; anything left unwritten holds the previous call's values). Outputs as :meth:`run` gives them.
        Safe from several threads: ``fill`` runs under the same lock as the engine call."""
        if self.quantized_input is None:
            raise TypeError(f"{self.name}: this model takes no quantised input; call run() with float32")
        with self._run_lock:
            return self._infer_quantized(batch, fill)

    def _infer_quantized(self, batch: int, fill: Callable[[np.ndarray], None]) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{self.name} declares a quantised input but cannot be fed one")

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
                              "--system-site-packages to see them), or from NVIDIA's 'tensorrt' wheels on a CUDA "
                              "machine")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends(fmt: ModelFormat | str | None = None) -> list[str]:
    """Backends whose engine module is installed here, in 'auto' preference order. Found, not imported (importing
    every engine would be slow): an installed engine that fails to load shows when :func:`load_backend` tries it."""
    fmt = ModelFormat(fmt) if fmt is not None else None
    names = [n for n in _AUTO_ORDER if n in _REGISTRY] + [n for n in _REGISTRY if n not in _AUTO_ORDER]
    return [n for n in names
            if _installed(_REGISTRY[n][0]) and (fmt is None or fmt in _REGISTRY[n][2])]


def _broken(name: str, error: BaseException) -> BackendUnavailable:
    """An engine that is installed but cannot load (a missing shared library, an ABI mismatch) is as unusable as a
    missing one: saying so as BackendUnavailable lets "auto" move on to the next runtime."""
    requires = _REGISTRY[name][0]
    hint = _HINTS.get(name, f"pip install {requires}")
    return BackendUnavailable(f"backend {name!r}: the Python module {requires!r} is installed but failed to load "
                              f"({type(error).__name__}: {error}); a missing or mismatched shared library is the usual "
                              f"cause: reinstall it ({hint}), or pick another backend")


def _engine_failure(error: BaseException) -> bool:
    """Whether an error is the engine library failing to load, not fiqa's own code or a file the caller named.

    An ImportError of a ``fiqa_*`` module is a bug in this package; an OSError naming a file (a calibration cache
    or engine-cache path) is the caller's input. Either must surface as itself, not as "reinstall the engine"
    (which would also make ``auto`` quietly fall back to a slower runtime).
    """
    if isinstance(error, ImportError):
        return not (error.name or "").startswith("fiqa_")
    return isinstance(error, OSError) and error.filename is None


@contextlib.contextmanager
def loading_model(name: str) -> Iterator[None]:
    """Around the engine call of backend ``name`` that reads the model: whatever it raises is that engine refusing
    the model, raised as :class:`ModelLoadError` (the engines' own exception types share no base class: ONNX
    Runtime's ``Fail`` is not even a RuntimeError). ImportError and OSError pass through as themselves, for
    :func:`_construct` to tell a broken engine from a missing file."""
    try:
        yield
    except (ImportError, OSError):
        raise
    except Exception as e:
        requires = _REGISTRY[name][0] if name in _REGISTRY else name
        version = getattr(sys.modules.get(requires), "__version__", None)
        engine = f"{name} {version}" if isinstance(version, str) else name
        raise ModelLoadError(
            f"{engine} could not load the model ({type(e).__name__}: {str(e).strip()}); usually the model needs a "
            f"newer {name} (an ONNX opset or TFLite operator it does not know yet) or the file is damaged: upgrade "
            f"{name}, pick another backend, or rebuild the bundle for the runtime installed here") from e


def _factory(name: str) -> Callable[..., Backend]:
    """The backend's class, after importing its engine, so a broken install fails here as BackendUnavailable."""
    requires, factory, _ = _REGISTRY[name]
    module, cls = factory.split(":")
    try:
        importlib.import_module(requires)
    except (ImportError, OSError) as e:
        raise _broken(name, e) from e
    return getattr(importlib.import_module(module), cls)  # fiqa's own module: its errors are bugs, shown as such


def _construct(name: str, model: bytes, options: dict) -> Backend:
    """Instantiate a backend; its lazy imports of engine submodules fail as BackendUnavailable, like its module's."""
    cls = _factory(name)
    try:
        return cls(model, **options)
    except (ImportError, OSError) as e:
        if not _engine_failure(e):
            raise
        raise _broken(name, e) from e


# NodeProto.op_type (field 4, length-delimited) = "QuantizeLinear", byte for byte as protobuf writes it.
_QDQ_MARKER = b"\x22\x0eQuantizeLinear"


def has_qdq_nodes(onnx: bytes) -> bool:
    """Whether an ONNX model holds QuantizeLinear nodes (an explicitly quantized INT8 graph). Found from the bytes
    protobuf writes for that op type, so a device needs no onnx package to tell."""
    return _QDQ_MARKER in onnx


def _auto_options(name: str, model: bytes, options: dict) -> dict:
    """Options for a backend tried by "auto". TensorRT defaults to INT8, which only a Q/DQ graph can build: unless
    the caller chose a precision (or gave an INT8 calibration cache), a float graph gets the float precision."""
    if name != "tensorrt" or "precision" in options or options.get("calibration_cache") is not None:
        return options
    if has_qdq_nodes(model):
        return {**options, "precision": "int8"}
    _factory(name)  # a broken TensorRT is BackendUnavailable here, before float_precision() imports it
    from fiqa_runtimes.tensorrt_backend import float_precision

    return {**options, "precision": float_precision()}


def check_threads(threads: object) -> None:
    """``threads`` as every backend takes it: a positive integer, or None for the engine's own choice."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")


def _check_named(backend: str, fmt: ModelFormat) -> None:
    """A known backend, for this format, whose engine module is installed (BackendUnavailable otherwise)."""
    if backend not in _REGISTRY:
        raise ValueError(f"unknown backend {backend!r}; known: {sorted(_REGISTRY)}")
    requires, _, formats = _REGISTRY[backend]
    if fmt not in formats:
        raise ValueError(f"backend {backend!r} runs {[f.value for f in formats]} models, not {fmt.value}")
    if not _installed(requires):
        hint = _HINTS.get(backend, f"pip install {requires}")
        raise BackendUnavailable(f"backend {backend!r} needs the Python module {requires!r}, which is not installed: "
                                 f"{hint}")


def _load_auto(model: bytes, fmt: ModelFormat, options: dict) -> Backend:
    """The best installed backend that can actually start (TensorRT without a GPU, or a broken install, cannot)."""
    candidates = available_backends(fmt)
    if not candidates:
        wanted = {ModelFormat.ONNX: "onnxruntime (pip install onnxruntime: fiqa-sdk's 'onnx' extra)",
                  ModelFormat.TFLITE: "ai-edge-litert (pip install ai-edge-litert: fiqa-sdk's 'tflite' extra)"}[fmt]
        raise BackendUnavailable(f"no runtime installed that runs {fmt.value} models; install {wanted}")
    reasons = []
    for name in candidates:
        try:
            _check_named(name, fmt)
            return _construct(name, model, _auto_options(name, model, options))
        except BackendUnavailable as e:
            log.warning("backend %s unavailable (%s); trying the next one", name, e)
            reasons.append(f"{name}: {e}")
    raise BackendUnavailable(f"no installed backend could load the {fmt.value} model: {'; '.join(reasons)}")


def load_backend(model: bytes | str, fmt: ModelFormat | str, backend: str = "auto", **options) -> Backend:
    """Load ``model`` (bytes or a path) with the named backend, or the best installed one for ``fmt``.

    An engine that is missing, or installed but fails to load (ImportError/OSError), raises BackendUnavailable;
    with ``auto`` that moves on to the next installed engine. ``auto`` builds TensorRT in INT8 only for a Q/DQ
    graph (a float one in fp16, or fp32 on TensorRT 11) unless ``precision`` is given.
    """
    check_threads(options.get("threads"))
    fmt = ModelFormat(fmt)
    if backend == "auto":
        return _load_auto(read_model(model), fmt, options)
    _check_named(backend, fmt)
    return _construct(backend, read_model(model), options)


def read_model(model: bytes | str) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()
