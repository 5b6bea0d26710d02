"""TensorRT on NVIDIA GPUs (Jetson first): builds an engine from Q/DQ ONNX on first use and caches it on disk.

A TensorRT engine is specific to the GPU, the TensorRT version and the build settings, and building one takes
from seconds to minutes on a Jetson, so the serialized engine is cached under a key made of all of them plus
the model's sha256 (:class:`EngineKey`). Version differences are confined to :func:`build_plan`: TensorRT 8.5-10
enable precisions with builder flags (the Q/DQ nodes then fix the INT8 layers), TensorRT 11 removed those
flags and builds every network strongly typed, taking precision from the Q/DQ graph itself.

``tensorrt`` and the CUDA bindings (``pycuda``, or NVIDIA's ``cuda-python``) are imported lazily: on a Jetson
they come with JetPack, and nowhere else does this module need them.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fiqa_runtimes.base import BackendUnavailable, ModelFormat, NamedIOBackend, read_model

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16", "fp32")
CACHE_SCHEMA = 2  # bump when the build procedure changes, so old cached engines are not reused

TENSORRT_HINT = ("the TensorRT backend needs NVIDIA's 'tensorrt' Python module. On a Jetson it ships with JetPack "
                 "(sudo apt install python3-libnvinfer, or the nvidia-jetpack meta-package); in a virtualenv, "
                 "create it with --system-site-packages so the JetPack module is visible. On x86 with a "
                 "discrete GPU: pip install tensorrt")
CUDA_HINT = ("the TensorRT backend needs CUDA bindings for device memory: pycuda (on a Jetson: "
             "pip install pycuda, which compiles against JetPack's CUDA toolkit; make sure nvcc is on PATH) "
             "or NVIDIA's cuda-python (pip install cuda-python, matching the JetPack CUDA major version)")


# -- pure helpers (testable without a GPU) ------------------------------------------------------------------------

def parse_version(version: str) -> tuple[int, int]:
    m = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    if not m:
        raise ValueError(f"cannot parse a TensorRT version from {version!r}; expected e.g. '10.3.0'")
    return int(m.group(1)), int(m.group(2))


def calibration_cache_version(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION, as a calibration cache's header names it: '8.6.2' -> 8602, '10.3.0' -> 100300
    (major*1000+minor*100+patch up to TensorRT 9, major*10000+... from 10). Caches exist for TensorRT 5-10 only."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if not m:
        raise ValueError(f"TensorRT version must look like '10.3.0', got {version!r}")
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if not 5 <= major <= 10:
        raise ValueError(f"TensorRT {version}: implicit-INT8 calibration caches are for TensorRT 5-10 "
                         "(TensorRT 10 deprecates them; use the Q/DQ ONNX there)")
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def restamp_calibration_cache(cache: bytes, trt_version: str) -> bytes:
    """The cache with its header naming the running TensorRT (``TRT-<NV_TENSORRT_VERSION>-<calibrator>``).

    TensorRT silently skips a cache stamped with another version and would then have nothing to calibrate with.
    The bundle's scales come from the compile, not from any TensorRT's calibration, so they hold for every
    version that reads the format (5-10): JetPack 5.1 (8.5), 6.0 (8.6) and 6.1/6.2 (10.3) all get them.
    """
    head, sep, body = cache.partition(b"\n")
    parts = head.decode("ascii", "replace").strip().split("-")
    if len(parts) != 3 or parts[0] != "TRT" or not parts[1].isdigit():
        raise ValueError(f"calibration cache header {head[:60]!r} is not 'TRT-<version>-<calibrator>'; pass the "
                         "bundle's trt_calibration.cache")
    return f"TRT-{calibration_cache_version(trt_version)}-{parts[2]}".encode("ascii") + sep + body


@dataclass(frozen=True)
class BuildPlan:
    """How to ask a given TensorRT for a given precision: names of ``NetworkDefinitionCreationFlag`` and
    ``BuilderFlag`` members to set, and whether the network will be strongly typed."""

    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    strongly_typed: bool = False


def build_plan(trt_version: str, precision: str, fp16_fallback: bool = False) -> BuildPlan:
    """Choose network and builder flags from the TensorRT version alone.

    * 8.5-8.x: explicit-batch networks must be requested; precisions are builder flags.
    * 9.x-10.x: networks are always explicit-batch; precisions are still builder flags (INT8 lets the Q/DQ
      layers run in INT8; layers outside Q/DQ pairs stay fp32, or may run in fp16 with ``fp16_fallback``,
      which adds the FP16 flag -- on an Orin that halves the float layers' memory traffic).
    * 11.x and later: precision flags are gone; every network is strongly typed (11.0 deprecated the
      STRONGLY_TYPED creation flag as always-on and ignored, so none is passed) and the Q/DQ ONNX carries the
      INT8 precision. fp16 needs an fp16 ONNX (ModelOpt AutoCast), so it is refused here, and
      ``fp16_fallback`` has nothing to switch (the ONNX's own types decide).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    major, minor = parse_version(trt_version)
    if (major, minor) < (8, 5):
        raise BackendUnavailable(f"TensorRT {trt_version} is too old: this backend uses the name-based tensor API "
                                 "of TensorRT >= 8.5 (JetPack 5.1+); JetPack 6 with TensorRT 10 is recommended")
    if major >= 11:
        if precision == "fp16":
            raise ValueError(f"TensorRT {trt_version} removed BuilderFlag.FP16: networks are strongly typed. "
                             "Use the Q/DQ INT8 model (precision='int8'), or convert the ONNX to fp16 with "
                             "ModelOpt AutoCast and build it with precision='fp32'")
        return BuildPlan(network_flags=(), builder_flags=(), strongly_typed=True)
    flags = {"int8": ("INT8", "FP16") if fp16_fallback else ("INT8",), "fp16": ("FP16",), "fp32": ()}[precision]
    return BuildPlan(network_flags=("EXPLICIT_BATCH",) if major == 8 else (), builder_flags=flags)


def float_precision(trt_version: str | None = None) -> str:
    """The precision for a float model (no Q/DQ nodes), e.g. a detector: fp16 where TensorRT still takes precision
    flags (< 11), else fp32, which on TensorRT 11 means the ONNX's own types (strong typing)."""
    version = trt_version if trt_version is not None else _import_tensorrt().__version__
    return "fp16" if parse_version(version)[0] < 11 else "fp32"


def cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An entropy calibrator that never calibrates: it hands TensorRT (<= 10) the bundle's calibration cache.

    TensorRT asks ``read_calibration_cache`` first and skips calibration when it gets one, so no images and no
    device buffers are needed; ``get_batch`` returning None would end a calibration that never starts.
    """

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._cache = cache

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return self._cache

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return CacheCalibrator()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on. Two keys are equal iff a cached engine may be reused."""

    gpu_name: str
    compute_capability: tuple[int, int]
    trt_version: str
    model_sha256: str
    settings_json: str  # canonical JSON of the build settings
    multiprocessors: int = 0  # Orin AGX / NX / Nano share a name and sm_87 but not their SM count

    @classmethod
    def create(cls, gpu_name: str, compute_capability: tuple[int, int], trt_version: str, model: bytes,
               settings: Mapping[str, Any], multiprocessors: int = 0) -> EngineKey:
        canonical = json.dumps({"schema": CACHE_SCHEMA, **settings}, sort_keys=True, separators=(",", ":"))
        return cls(str(gpu_name), (int(compute_capability[0]), int(compute_capability[1])), str(trt_version),
                   hashlib.sha256(model).hexdigest(), canonical, int(multiprocessors))

    def digest(self) -> str:
        blob = json.dumps([self.gpu_name, list(self.compute_capability), self.trt_version, self.model_sha256,
                           self.settings_json, self.multiprocessors])
        return hashlib.sha256(blob.encode()).hexdigest()

    def relative_path(self) -> Path:
        """``<gpu>-sm<XY>/trt-<version>/<model sha[:16]>-<key digest[:16]>.engine``: readable enough to clean up by
        hand (delete a GPU's or an old TensorRT's folder), exact enough never to load a wrong engine."""
        major, minor = self.compute_capability
        return (Path(f"{_slug(self.gpu_name)}-sm{major}{minor}") / f"trt-{_slug(self.trt_version)}"
                / f"{self.model_sha256[:16]}-{self.digest()[:16]}.engine")

    def to_dict(self) -> dict[str, Any]:
        return {"gpu_name": self.gpu_name, "compute_capability": list(self.compute_capability),
                "multiprocessors": self.multiprocessors,
                "trt_version": self.trt_version, "model_sha256": self.model_sha256,
                "settings": json.loads(self.settings_json), "digest": self.digest()}


def default_cache_dir() -> Path:
    return Path(os.environ.get("FIQA_CACHE", Path.home() / ".cache" / "fiqa-sdk")) / "tensorrt"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- CUDA memory: pycuda or cuda-python ---------------------------------------------------------------------------

class _PyCuda:
    """CUDA through pycuda, on the device's primary context (the one TensorRT's runtime-API calls use).

    Every call runs inside :meth:`activate`, which makes that context current on the calling thread and restores
    the caller's afterwards: without it TensorRT would work on whatever context the thread has (device 0's primary
    context, or one the application made), not on device ``device``.
    """

    def __init__(self, device: int):
        import pycuda.driver as drv

        self._drv = drv
        drv.init()
        self._dev = drv.Device(device)
        self._ctx = self._dev.retain_primary_context()
        self._allocs: dict[int, Any] = {}

    @contextlib.contextmanager
    def activate(self):
        self._ctx.push()
        try:
            yield
        finally:
            self._drv.Context.pop()

    def device(self) -> tuple[str, tuple[int, int], int]:
        sms = self._dev.get_attribute(self._drv.device_attribute.MULTIPROCESSOR_COUNT)
        return str(self._dev.name()), tuple(self._dev.compute_capability()), int(sms)

    def stream(self) -> Any:
        return self._drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def destroy_stream(self, stream: Any) -> None:
        pass  # pycuda frees its Stream objects itself

    def malloc(self, nbytes: int) -> int:
        alloc = self._drv.mem_alloc(nbytes)
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def pinned(self, nbytes: int) -> np.ndarray:
        """Page-locked host bytes: what asynchronous copies require (pycuda's contract) and what lets them run
        without a staging copy."""
        return self._drv.pagelocked_empty(nbytes, np.uint8)

    def free_pinned(self, host: np.ndarray) -> None:
        owner = host.base  # pycuda's HostAllocation, at the end of the array's base chain (freed when collected too)
        while isinstance(owner, np.ndarray):
            owner = owner.base
        if hasattr(owner, "free"):
            owner.free()

    def htod(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        self._drv.memcpy_htod_async(ptr, host, stream)

    def dtoh(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        self._drv.memcpy_dtoh_async(host, ptr, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()


class _CudaPython:
    """CUDA through NVIDIA's cuda-python runtime bindings (``cuda.bindings.runtime``, or the older ``cuda.cudart``).

    The runtime's current device is per host thread, so :meth:`activate` sets it for the duration of each call and
    puts the caller's back.
    """

    def __init__(self, device: int):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self._rt = cudart
        self._device = int(device)
        with self.activate():  # fails here, not later, when the device cannot be used
            pass

    def _call(self, result: Any) -> Any:
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self._rt.cudaError_t.cudaSuccess:
            name = self._rt.cudaGetErrorName(err)
            name = name[1] if isinstance(name, tuple) else name
            raise RuntimeError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
        return rest[0] if len(rest) == 1 else rest

    @contextlib.contextmanager
    def activate(self):
        previous = int(self._call(self._rt.cudaGetDevice()))
        self._call(self._rt.cudaSetDevice(self._device))
        try:
            yield
        finally:
            self._call(self._rt.cudaSetDevice(previous))

    def device(self) -> tuple[str, tuple[int, int], int]:
        props = self._call(self._rt.cudaGetDeviceProperties(self._device))
        name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
        return name, (int(props.major), int(props.minor)), int(props.multiProcessorCount)

    def stream(self) -> Any:
        return self._call(self._rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def destroy_stream(self, stream: Any) -> None:
        self._call(self._rt.cudaStreamDestroy(stream))

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self._rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._call(self._rt.cudaFree(ptr))

    def pinned(self, nbytes: int) -> np.ndarray:
        ptr = int(self._call(self._rt.cudaMallocHost(nbytes)))
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))

    def free_pinned(self, host: np.ndarray) -> None:
        self._call(self._rt.cudaFreeHost(host.ctypes.data))

    def htod(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream))

    def dtoh(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, stream))

    def synchronize(self, stream: Any) -> None:
        self._call(self._rt.cudaStreamSynchronize(stream))


def _cuda(device: int) -> _PyCuda | _CudaPython:
    """pycuda when installed (JetPack's usual companion), else cuda-python; neither -> BackendUnavailable.

    Bindings that import but find no usable GPU (no driver, no device ``device``, a container without the GPU)
    are also BackendUnavailable, so ``backend="auto"`` falls back to the next runtime instead of failing."""
    failures = []
    for cls, module in ((_PyCuda, "pycuda"), (_CudaPython, "cuda-python")):
        try:
            cuda = cls(device)
            cuda.device()  # the first call that needs the GPU itself
            return cuda
        except ImportError as e:
            log.debug("%s unavailable: %s", module, e)
        except Exception as e:  # noqa: BLE001 -- pycuda.driver.Error, RuntimeError from cuda-python, ...
            failures.append(f"{module}: {type(e).__name__}: {e}")
    if failures:
        raise BackendUnavailable(f"CUDA bindings are installed but GPU {device} cannot be used ({'; '.join(failures)});"
                                 " check the NVIDIA driver and that this process can see the GPU")
    raise BackendUnavailable(CUDA_HINT)


_LOGGER: list[tuple[Any, Any]] = []  # (tensorrt module, its logger)


def _logger(trt: Any) -> Any:
    """One logger for the process: TensorRT keeps a single logger pointer and warns when handed another."""
    if not _LOGGER or _LOGGER[0][0] is not trt:
        _LOGGER[:] = [(trt, trt.Logger(trt.Logger.WARNING))]
    return _LOGGER[0][1]


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(f"{TENSORRT_HINT} (import failed: {e})") from e
    return tensorrt


# -- the backend --------------------------------------------------------------------------------------------------

class TensorRTBackend(NamedIOBackend):
    """An ONNX model run by TensorRT, engine built once per (GPU, TensorRT, model, settings) and cached.

    Safe to share between threads: the execution context and its buffers serve one call at a time (:meth:`run`
    serialises them), so threads that want the GPU to overlap their calls each load their own instance.

    Args:
        model: ONNX bytes or path (the Q/DQ INT8 student for ``precision="int8"``).
        precision: ``int8`` (needs Q/DQ nodes), ``fp16`` (TensorRT < 11 only) or ``fp32``.
        fp16_fallback: with ``int8`` on TensorRT < 11, let layers outside Q/DQ pairs run in fp16 (FP16 flag).
        calibration_cache: bytes or path of a TensorRT calibration cache (the bundle's ``trt_calibration.cache``):
            with ``int8`` and a float ONNX (no Q/DQ nodes), TensorRT <= 10 builds *implicit* INT8 from its scales.
            TensorRT 11 removed implicit quantisation; there the Q/DQ ONNX is the only INT8 route.
        max_batch / opt_batch: optimisation profile for a dynamic batch dimension (opt: the size kernels are tuned
            for; default ``max_batch``).
        profile_shapes: ``{input: (min, opt, max)}`` for inputs with other dynamic dims (e.g. a detector's H, W).
        workspace_mb: builder scratch memory limit; Jetsons share RAM with the GPU, so keep it modest.
        cache_dir: engine cache root (default ``$FIQA_CACHE/tensorrt`` or ``~/.cache/fiqa-sdk/tensorrt``).
        device: CUDA device ordinal.
        threads: accepted so every backend takes the same options; TensorRT runs on the GPU and ignores it.
    """

    name = "tensorrt"
    formats = (ModelFormat.ONNX,)

    def __init__(self, model: bytes | str, precision: str = "int8", max_batch: int = 32, opt_batch: int | None = None,
                 profile_shapes: Mapping[str, tuple] | None = None, workspace_mb: int = 256,
                 cache_dir: str | os.PathLike | None = None, device: int = 0, threads: int | None = None,
                 fp16_fallback: bool = False, calibration_cache: bytes | str | os.PathLike | None = None):
        super().__init__()
        if max_batch < 1 or (opt_batch is not None and not 1 <= opt_batch <= max_batch):
            raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")
        trt = _import_tensorrt()
        plan = build_plan(trt.__version__, precision, fp16_fallback)
        if calibration_cache is not None:
            if plan.strongly_typed:
                raise ValueError(f"TensorRT {trt.__version__} removed implicit INT8 calibration, so a calibration "
                                 "cache cannot be used; build the Q/DQ INT8 ONNX instead (no calibration_cache)")
            if precision != "int8":
                raise ValueError(f"a calibration cache only applies to precision='int8', not {precision!r}")
            if not isinstance(calibration_cache, bytes):
                calibration_cache = Path(calibration_cache).read_bytes()
            if not calibration_cache.startswith(b"TRT-"):
                raise ValueError("calibration_cache is not a TensorRT calibration cache (its first line must be "
                                 "'TRT-<version>-<calibrator>'); pass the bundle's trt_calibration.cache")
            calibration_cache = restamp_calibration_cache(calibration_cache, trt.__version__)
        self._calibration_cache = calibration_cache
        self._trt = trt
        self._cuda = _cuda(device)
        onnx = read_model(model)
        self._profile_shapes = {k: [list(map(int, s)) for s in v] for k, v in (profile_shapes or {}).items()}
        for name, shapes in self._profile_shapes.items():
            if len(shapes) != 3 or len({len(s) for s in shapes}) != 1:
                raise ValueError(f"profile_shapes[{name!r}] must be (min, opt, max) shapes of equal rank")
        self._settings = {"precision": precision, "max_batch": int(max_batch),
                          "opt_batch": int(opt_batch or max_batch), "workspace_mb": int(workspace_mb),
                          "profile_shapes": self._profile_shapes,
                          "plan": [list(plan.network_flags), list(plan.builder_flags), plan.strongly_typed]}
        if calibration_cache is not None:  # only then, so the keys of engines built without one stay as they were
            self._settings["calibration_cache_sha256"] = hashlib.sha256(calibration_cache).hexdigest()
        gpu_name, cc, sms = self._cuda.device()
        self.key = EngineKey.create(gpu_name, cc, trt.__version__, onnx, self._settings, multiprocessors=sms)
        self.engine_path = (Path(cache_dir) if cache_dir else default_cache_dir()) / self.key.relative_path()
        self._buffers: dict[str, tuple[int, int]] = {}
        self._host: dict[str, np.ndarray] = {}
        self._stream = None
        with self._cuda.activate():  # TensorRT works on the current context: make it device ``device``'s
            self._load(onnx, plan)

    def _load(self, onnx: bytes, plan: BuildPlan) -> None:
        trt = self._trt
        self._logger = _logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.built = False
        engine = None
        if self.engine_path.is_file():
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                log.warning("cached TensorRT engine %s could not be deserialized; rebuilding it", self.engine_path)
        if engine is None:
            serialized = self._build(onnx, plan)
            engine = self._runtime.deserialize_cuda_engine(serialized)
            if engine is None:
                raise RuntimeError("TensorRT built an engine it cannot deserialize; see the TensorRT log above")
            self._store(serialized)
            self.built = True
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?); "
                               "see the TensorRT log above")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._stream = self._cuda.stream()

    # -- build & cache ---------------------------------------------------------------------------------------------
    def _build(self, onnx: bytes, plan: BuildPlan) -> bytes:
        trt = self._trt
        log.warning("building a TensorRT engine for %s (one-off; cached at %s)", self.key.gpu_name, self.engine_path)
        builder = trt.Builder(self._logger)
        flags = 0
        for flag in plan.network_flags:
            flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, flag))
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"TensorRT could not parse the ONNX model: {errors}")
        explicit = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
        if self._settings["precision"] == "int8" and not explicit and self._calibration_cache is None:
            raise ValueError("precision='int8' needs an explicitly quantized (Q/DQ) ONNX, and this model has no "
                             "QuantizeLinear nodes; export the INT8 student, use precision='fp16'/'fp32', or (TensorRT "
                             "<= 10) pass calibration_cache= for implicit INT8")
        if explicit and self._calibration_cache is not None:
            raise ValueError("this ONNX is already explicitly quantized (Q/DQ); a calibration cache is for the float "
                             "ONNX only -- drop calibration_cache, or pass the float model")
        config = builder.create_builder_config()
        if self._calibration_cache is not None:
            config.int8_calibrator = cache_calibrator(trt, self._calibration_cache)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._settings["workspace_mb"] << 20)
        for flag in plan.builder_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        profile, dynamic = builder.create_optimization_profile(), False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(int(d) for d in tensor.shape)
            if tensor.name in self._profile_shapes:
                lo, opt, hi = (tuple(s) for s in self._profile_shapes[tensor.name])
            elif -1 in shape[1:]:
                raise ValueError(f"input {tensor.name!r} has dynamic dims besides the batch: {shape}; pass "
                                 f"profile_shapes={{{tensor.name!r}: (min, opt, max)}}")
            elif shape and shape[0] == -1:
                rest = shape[1:]
                lo, opt, hi = (1, *rest), (self._settings["opt_batch"], *rest), (self._settings["max_batch"], *rest)
            else:
                continue
            profile.set_shape(tensor.name, lo, opt, hi)
            dynamic = True
        if dynamic:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT failed to build the engine; the TensorRT log above says why")
        return bytes(memoryview(serialized))

    def _store(self, serialized: bytes) -> None:
        try:
            _write_atomic(self.engine_path, serialized)
            _write_atomic(self.engine_path.with_suffix(".json"), json.dumps(self.key.to_dict(), indent=1).encode())
        except OSError as e:
            log.warning("could not cache the TensorRT engine at %s (%s); it will be rebuilt next time; set "
                        "cache_dir or $FIQA_CACHE to a writable folder", self.engine_path, e)

    # -- inference ---------------------------------------------------------------------------------------------------
    def _buffer(self, name: str, nbytes: int) -> tuple[int, np.ndarray]:
        """Device buffer and page-locked host buffer of at least ``nbytes`` for tensor ``name``, grown on demand."""
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:  # forget the old pair before freeing it, so a failed allocation below leaves nothing dangling
                del self._buffers[name]
                self._cuda.free(ptr)
                self._cuda.free_pinned(self._host.pop(name))
            ptr = self._cuda.malloc(nbytes)
            try:
                host = self._cuda.pinned(nbytes)
            except BaseException:
                self._cuda.free(ptr)
                raise
            self._buffers[name], self._host[name] = (ptr, nbytes), host
        return ptr, self._host[name]

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._stream is None:
            raise RuntimeError("this TensorRT backend is closed")
        missing, extra = set(self._inputs) - set(inputs), set(inputs) - set(self._inputs)
        if missing or extra:
            raise KeyError(f"engine inputs are {self._inputs}; missing {sorted(missing)}, unexpected {sorted(extra)}")
        with self._cuda.activate():
            try:
                return self._execute(inputs)
            finally:  # nothing queued may outlive the call, not even after an error
                self._cuda.synchronize(self._stream)

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self._inputs:
            x = np.asarray(inputs[name], dtype=self._dtypes[name])
            if x.size == 0:
                raise ValueError(f"input {name!r} is empty (shape {x.shape})")
            if not self._context.set_input_shape(name, tuple(x.shape)):
                raise ValueError(f"input {name!r} of shape {x.shape} is outside the engine's optimisation profile "
                                 f"(max_batch={self._settings['max_batch']}, profile_shapes="
                                 f"{self._profile_shapes}); split the batch or rebuild with larger limits")
            ptr, host = self._buffer(name, x.nbytes)
            staged = host[:x.nbytes].view(x.dtype).reshape(x.shape)
            np.copyto(staged, x)
            self._cuda.htod(ptr, staged, self._stream)
            self._address(name, ptr)
        outputs = {}
        for name in self._outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name!r} shape {shape} is unresolved; are all input shapes set?")
            nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
            ptr, host = self._buffer(name, max(nbytes, 1))
            self._address(name, ptr)
            outputs[name] = (host[:nbytes].view(self._dtypes[name]).reshape(shape), ptr)
        if not self._context.execute_async_v3(self._cuda.stream_handle(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        for host, ptr in outputs.values():
            self._cuda.dtoh(host, ptr, self._stream)
        self._cuda.synchronize(self._stream)
        # copies: the page-locked buffers are reused by the next call
        return {name: host.astype(np.float32, copy=True) for name, (host, _) in outputs.items()}

    def _address(self, name: str, ptr: int) -> None:
        if self._context.set_tensor_address(name, ptr) is False:
            raise RuntimeError(f"TensorRT refused the device address of tensor {name!r}")

    def close(self) -> None:
        """Free device and page-locked buffers and the stream now rather than at interpreter exit; a call running
        in another thread finishes first."""
        with self._run_lock:
            self._release()

    def _release(self) -> None:
        if self._stream is None:
            return
        stream, self._stream = self._stream, None  # closed from here on, whatever fails below
        with self._cuda.activate():
            try:
                self._cuda.synchronize(stream)
            finally:
                while self._buffers:
                    name, (ptr, _) = self._buffers.popitem()
                    self._cuda.free(ptr)
                    self._cuda.free_pinned(self._host.pop(name))
                self._context = self._engine = None
                self._cuda.destroy_stream(stream)
