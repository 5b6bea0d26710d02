"""One small interface over inference engines (ONNX Runtime, OpenCV DNN, LiteRT/TFLite, TensorRT).

Device code asks for a :class:`Backend` by name (or ``"auto"``) and feeds it float32 batches;
each backend hides its own layout, quantisation and memory handling. A backend whose model takes
integers (full-INT8 TFLite) also says so (:attr:`Backend.quantized_input`) and takes them as they are
(:meth:`Backend.run_quantized`). Imports numpy only: every engine is imported lazily inside its backend,
so a device installs just the one it uses.
"""
from fiqa_runtimes.base import (
    Backend,
    BackendUnavailable,
    ModelFormat,
    ModelLoadError,
    QuantizedInput,
    available_backends,
    check_threads,
    load_backend,
    register_backend,
)

__all__ = [
    "Backend",
    "BackendUnavailable",
    "ModelFormat",
    "ModelLoadError",
    "QuantizedInput",
    "available_backends",
    "check_threads",
    "load_backend",
    "register_backend",
]
