"""TensorRT backend without a GPU: version branching, cache keys and layout, error messages, and the build/cache
control flow against fake ``tensorrt`` / ``pycuda`` / ``cuda-python`` modules whose "device memory" is real host
memory, so data really flows through the copies and the fake engine's arithmetic."""
from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import logging
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from fiqa_runtimes import BackendUnavailable, available_backends, load_backend
from fiqa_runtimes.tensorrt_backend import (BuildPlan, EngineKey, TensorRTBackend, build_plan, parse_version,
                                            restamp_calibration_cache)

MAGIC = b"FAKE-TRT-ENGINE\n"


def onnx_model(inputs=None, qdq=True) -> bytes:
    """The fake parser reads this JSON instead of protobuf: input shapes and whether Q/DQ nodes exist."""
    return json.dumps({"inputs": inputs or {"x": [-1, 4]}, "qdq": qdq}).encode()


def fake_tensorrt(version: str) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    major = int(version.split(".")[0])
    stats = trt.stats = {"builds": 0, "deserialized": 0, "network_flags": [], "builder_flags": [], "profiles": [],
                         "calibration_caches": []}
    # Real TensorRT works on the calling thread's current CUDA context; install_fakes points this at the fake
    # bindings' "is device N's context current?" so a call made outside it fails as it would on a second GPU.
    trt.context_is_current = lambda: True

    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            self.severity = severity

    trt.Logger = Logger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1} if major >= 11 else {"EXPLICIT_BATCH": 0,
                                                                                     "STRONGLY_TYPED": 1})
    # TensorRT 11 has no precision flags: code that still sets them fails here like it would on the real thing.
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"REFIT": 3} if major >= 11 else {"FP16": 0, "INT8": 1, "REFIT": 3})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.LayerType = enum.Enum("LayerType", "QUANTIZE CONVOLUTION")
    trt.DataType = enum.Enum("DataType", "FLOAT")
    trt.nptype = lambda dt: {trt.DataType.FLOAT: np.float32}[dt]

    class Network:
        def __init__(self):
            self.inputs, self.layers = [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))
        get_input = lambda self, i: self.inputs[i]
        get_layer = lambda self, i: self.layers[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, data):
            try:
                spec = json.loads(data)
            except ValueError:
                self.errors = ["ModelImporter: failed to parse ONNX model from file"]
                return False
            self.network.inputs = [types.SimpleNamespace(name=n, shape=tuple(s)) for n, s in spec["inputs"].items()]
            kind = trt.LayerType.QUANTIZE if spec["qdq"] else trt.LayerType.CONVOLUTION
            self.network.layers = [types.SimpleNamespace(type=t) for t in (trt.LayerType.CONVOLUTION, kind)]
            return True

        num_errors = property(lambda self: len(self.errors))
        get_error = lambda self, i: self.errors[i]

    if major < 11:  # TensorRT 11 removed the INT8 calibrators with implicit quantisation
        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pools = set(), [], {}
            self.int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            stats["network_flags"].append(flags)
            return Network()

        create_builder_config = lambda self: Config()
        create_optimization_profile = lambda self: Profile()

        def build_serialized_network(self, network, config):
            assert trt.context_is_current(), "TensorRT build outside the device's CUDA context"
            stats["builds"] += 1
            stats["builder_flags"].append(sorted(config.flags))
            calibrator = config.int8_calibrator
            if calibrator is not None:  # what TensorRT asks first; a cache means no get_batch() calls
                assert isinstance(calibrator, trt.IInt8EntropyCalibrator2) and calibrator.get_batch(["x"]) is None
            stats["calibration_caches"].append(calibrator.read_calibration_cache() if calibrator else None)
            profile = config.profiles[0].shapes if config.profiles else {}
            stats["profiles"].append(profile)
            desc = {"inputs": {t.name: list(t.shape) for t in network.inputs}, "profile": profile}
            return MAGIC + json.dumps(desc).encode()

    class Engine:
        def __init__(self, desc):
            self.desc = desc
            self.names = list(desc["inputs"]) + ["y"]

        num_io_tensors = property(lambda self: len(self.names))
        get_tensor_name = lambda self, i: self.names[i]
        get_tensor_mode = lambda self, n: trt.TensorIOMode.OUTPUT if n == "y" else trt.TensorIOMode.INPUT
        get_tensor_dtype = lambda self, n: trt.DataType.FLOAT
        def create_execution_context(self):
            assert trt.context_is_current(), "execution context created outside the device's CUDA context"
            return Context(self.desc)

    class Context:
        """Computes y = 2 * x + 1 from and into "device" pointers."""

        def __init__(self, desc):
            self.desc, self.shapes, self.addresses = desc, {}, {}

        def set_input_shape(self, name, shape):
            if name in self.desc["profile"]:
                lo, _, hi = self.desc["profile"][name]
                ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
            else:
                ok = list(shape) == self.desc["inputs"][name]
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            return self.shapes["x"] if name == "y" else self.shapes[name]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = int(ptr)

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int)
            assert trt.context_is_current(), "execute_async_v3 outside the device's CUDA context"
            n = int(np.prod(self.shapes["x"]))
            x = np.frombuffer((ctypes.c_float * n).from_address(self.addresses["x"]), np.float32)
            y = (2 * x + 1).astype(np.float32)
            ctypes.memmove(self.addresses["y"], y.ctypes.data, y.nbytes)
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            assert trt.context_is_current(), "engine deserialized outside the device's CUDA context"
            stats["deserialized"] += 1
            blob = bytes(blob)
            return Engine(json.loads(blob[len(MAGIC):])) if blob.startswith(MAGIC) else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def fake_pycuda(name="Orin", cc=(8, 7)):
    pkg, drv = types.ModuleType("pycuda"), types.ModuleType("pycuda.driver")
    pkg.driver = drv
    state = drv.state = {"stack": [], "live": {}, "freed": 0, "pinned": {}, "pinned_freed": 0}
    drv.init = lambda: None
    drv.device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT")

    class Ctx:
        def push(self):
            state["stack"].append(self)

    class Context:
        @staticmethod
        def pop():
            state["stack"].pop()

    class Device:
        def __init__(self, i):
            self.i = i

        name = lambda self: name
        compute_capability = lambda self: cc
        retain_primary_context = lambda self: Ctx()
        get_attribute = lambda self, attr: {"MULTIPROCESSOR_COUNT": 16}[attr]

    class Allocation:
        def __init__(self, nbytes):
            assert state["stack"], "pycuda call outside a pushed context"
            self.buf = ctypes.create_string_buffer(nbytes)
            state["live"][int(self)] = self

        def __int__(self):
            return ctypes.addressof(self.buf)

        def free(self):
            assert state["stack"], "pycuda free outside a pushed context"
            state["live"].pop(int(self))
            state["freed"] += 1

    class Stream:
        handle = 4242

        def __init__(self):
            assert state["stack"], "stream created outside a pushed context"

        def synchronize(self):
            assert state["stack"]

    def pagelocked_empty(shape, dtype):
        """Like pycuda's: an array whose .base is the host allocation (with .free()); its range is recorded so the
        copies below can insist on page-locked memory, as pycuda's documentation does."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize

        class HostAllocation(ctypes.c_uint8 * nbytes):
            def free(self):
                state["pinned"].pop(ctypes.addressof(self))
                state["pinned_freed"] += 1

        allocation = HostAllocation()
        state["pinned"][ctypes.addressof(allocation)] = nbytes
        return np.frombuffer(allocation, np.uint8).view(dtype).reshape(shape)

    def is_pinned(host):
        return any(a <= host.ctypes.data and host.ctypes.data + host.nbytes <= a + n for a, n in state["pinned"].items())

    def htod(dst, src, stream):
        assert state["stack"] and is_pinned(src), "async copy from pageable memory"
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)

    def dtoh(dst, src, stream):
        assert state["stack"] and is_pinned(dst), "async copy into pageable memory"
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    drv.Context, drv.Device, drv.Stream, drv.mem_alloc = Context, Device, Stream, Allocation
    drv.pagelocked_empty = pagelocked_empty
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = htod, dtoh
    return pkg, drv


def fake_cuda_python(fail_malloc=False, no_device=False, devices=2):
    """cuda-python's runtime bindings with a per-thread current device (as CUDA's runtime has): allocations and
    streams belong to the device current when they were made, and using them on another one fails."""
    cuda, bindings, rt = (types.ModuleType(n) for n in ("cuda", "cuda.bindings", "cuda.bindings.runtime"))
    cuda.bindings, bindings.runtime = bindings, rt
    err = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorMemoryAllocation": 2, "cudaErrorInvalidDevice": 101,
                                       "cudaErrorNoDevice": 100, "cudaErrorInvalidResourceHandle": 400})
    rt.cudaError_t = err
    rt.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    thread = threading.local()
    state = rt.state = {"device_of": {}, "pinned": {}, "streams": {}, "destroyed": 0}
    ok = err.cudaSuccess
    rt.current = lambda: getattr(thread, "device", 0)

    def set_device(d):
        if no_device:
            return (err.cudaErrorNoDevice,)
        if not 0 <= d < devices:
            return (err.cudaErrorInvalidDevice,)
        thread.device = d
        return (ok,)

    rt.cudaSetDevice, rt.cudaGetDevice = set_device, lambda: (ok, rt.current())
    rt.cudaGetDeviceProperties = lambda d: (ok, types.SimpleNamespace(name=b"NVIDIA Jetson AGX Orin\0\0", major=8,
                                                                      minor=7, multiProcessorCount=16))
    rt.cudaGetErrorName = lambda e: (ok, err(e).name.encode())

    def stream_create():
        handle = 99 + len(state["streams"])
        state["streams"][handle] = rt.current()
        return (ok, handle)

    def stream_destroy(handle):
        state["streams"].pop(handle)
        state["destroyed"] += 1
        return (ok,)

    def on_its_device(stream):
        return state["streams"][stream] == rt.current()

    rt.cudaStreamCreate, rt.cudaStreamDestroy = stream_create, stream_destroy
    rt.cudaStreamSynchronize = lambda s: (ok if on_its_device(s) else err.cudaErrorInvalidResourceHandle,)

    def malloc(n):
        if fail_malloc:
            return (err.cudaErrorMemoryAllocation, 0)
        buf = ctypes.create_string_buffer(n)
        state["device_of"][ctypes.addressof(buf)] = (rt.current(), buf)
        return (ok, ctypes.addressof(buf))

    def malloc_host(n):
        buf = ctypes.create_string_buffer(n)
        state["pinned"][ctypes.addressof(buf)] = buf
        return (ok, ctypes.addressof(buf))

    def memcpy(dst, src, count, kind, stream):
        device_ptr = src if kind == rt.cudaMemcpyKind.cudaMemcpyDeviceToHost else dst
        host_ptr = dst if kind == rt.cudaMemcpyKind.cudaMemcpyDeviceToHost else src
        assert any(a <= host_ptr and host_ptr + count <= a + len(b) for a, b in state["pinned"].items()), \
            "async copy with pageable host memory"
        if not on_its_device(stream) or state["device_of"][device_ptr][0] != rt.current():
            return (err.cudaErrorInvalidResourceHandle,)
        ctypes.memmove(dst, src, count)
        return (ok,)

    rt.cudaMalloc, rt.cudaMallocHost, rt.cudaMemcpyAsync = malloc, malloc_host, memcpy
    rt.cudaFree = lambda p: (state["device_of"].pop(p) and ok,)
    rt.cudaFreeHost = lambda p: (state["pinned"].pop(p) and ok,)
    return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}


def install_fakes(monkeypatch, version: str):
    """A fake TensorRT ``version`` and a fake pycuda in sys.modules for one test; returns the fake TensorRT."""
    trt = fake_tensorrt(version)
    pkg, drv = fake_pycuda()
    trt.context_is_current = lambda: bool(drv.state["stack"])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    return trt


@pytest.fixture
def trt10(monkeypatch):
    return install_fakes(monkeypatch, "10.3.0.30")


# -- pure functions --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version, precision, plan", [
    ("8.5.2.2", "int8", BuildPlan(("EXPLICIT_BATCH",), ("INT8",))),
    ("8.6.2", "fp16", BuildPlan(("EXPLICIT_BATCH",), ("FP16",))),
    ("10.3.0.30", "int8", BuildPlan((), ("INT8",))),
    ("10.3.0", "fp16", BuildPlan((), ("FP16",))),
    ("10.13.0", "fp32", BuildPlan((), ())),
    ("11.0.0", "int8", BuildPlan((), (), strongly_typed=True)),
    ("11.4.1.2", "fp32", BuildPlan((), (), strongly_typed=True)),
    ("12.0", "int8", BuildPlan((), (), strongly_typed=True)),
])
def test_build_plan_by_version(version, precision, plan):
    assert build_plan(version, precision) == plan


@pytest.mark.parametrize("version, plan", [
    ("8.6.2", BuildPlan(("EXPLICIT_BATCH",), ("INT8", "FP16"))),
    ("10.3.0", BuildPlan((), ("INT8", "FP16"))),
    ("11.0.0", BuildPlan((), (), strongly_typed=True)),
])
def test_fp16_fallback_adds_the_fp16_flag_where_flags_exist(version, plan):
    assert build_plan(version, "int8", fp16_fallback=True) == plan
    assert build_plan(version, "fp32", fp16_fallback=True) == build_plan(version, "fp32")


def test_build_plan_refusals():
    with pytest.raises(ValueError, match="removed BuilderFlag.FP16.*AutoCast"):
        build_plan("11.1.0", "fp16")
    with pytest.raises(BackendUnavailable, match="too old.*8.5"):
        build_plan("8.4.3", "int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        build_plan("10.3.0", "int4")
    with pytest.raises(ValueError, match="cannot parse a TensorRT version"):
        parse_version("ten")
    assert parse_version("10.3.0.30") == (10, 3)


def test_engine_key_changes_with_every_component():
    base = dict(gpu_name="Orin", compute_capability=(8, 7), trt_version="10.3.0", model=b"model",
                settings={"precision": "int8", "max_batch": 32})
    key = EngineKey.create(**base)
    assert EngineKey.create(**base) == key and EngineKey.create(**base).digest() == key.digest()
    variants = [dict(gpu_name="Xavier"), dict(compute_capability=(7, 2)), dict(trt_version="10.3.1"),
                dict(model=b"model2"), dict(settings={"precision": "fp16", "max_batch": 32}),
                dict(settings={"precision": "int8", "max_batch": 16}), dict(multiprocessors=8)]
    digests = {key.digest()} | {EngineKey.create(**{**base, **v}).digest() for v in variants}
    paths = {key.relative_path()} | {EngineKey.create(**{**base, **v}).relative_path() for v in variants}
    assert len(digests) == len(paths) == 1 + len(variants)  # an Orin Nano (8 SMs) never loads an AGX's engine
    # Settings are canonical: key order does not matter.
    assert EngineKey.create(**{**base, "settings": {"max_batch": 32, "precision": "int8"}}) == key


def test_cache_path_layout():
    key = EngineKey.create("NVIDIA Jetson AGX Orin", (8, 7), "10.3.0.30", b"onnx", {"precision": "int8"})
    path = key.relative_path()
    sha = key.model_sha256
    assert path == Path("nvidia-jetson-agx-orin-sm87") / "trt-10-3-0-30" / f"{sha[:16]}-{key.digest()[:16]}.engine"
    assert key.to_dict()["settings"]["precision"] == "int8" and key.to_dict()["compute_capability"] == [8, 7]


# -- missing dependencies --------------------------------------------------------------------------------------------

def test_missing_tensorrt_says_it_comes_from_jetpack(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match="JetPack.*python3-libnvinfer.*--system-site-packages"):
        TensorRTBackend(onnx_model())
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        load_backend(onnx_model(), "onnx", backend="tensorrt")
    assert "tensorrt" not in available_backends("onnx")


def test_missing_cuda_bindings_name_both_options(monkeypatch, trt10):
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailable, match="pycuda.*cuda-python"):
        TensorRTBackend(onnx_model())


# -- build and cache control flow ------------------------------------------------------------------------------------

def test_builds_once_then_loads_from_cache(tmp_path, trt10):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    first = TensorRTBackend(onnx_model(), cache_dir=tmp_path, max_batch=8, opt_batch=4)
    assert first.built and trt10.stats["builds"] == 1
    assert trt10.stats["builder_flags"] == [["INT8"]] and trt10.stats["network_flags"] == [0]
    assert trt10.stats["profiles"] == [{"x": [[1, 4], [4, 4], [8, 4]]}]
    assert first.engine_path == tmp_path / first.key.relative_path() and first.engine_path.is_file()
    meta = json.loads(first.engine_path.with_suffix(".json").read_text())
    assert meta["gpu_name"] == "Orin" and meta["trt_version"] == "10.3.0.30" and meta["digest"] == first.key.digest()
    assert first.input_names == ["x"] and first.output_names == ["y"]
    np.testing.assert_array_equal(first.run1(x)["y"], 2 * x + 1)
    big = np.ones((8, 4), np.float32)
    np.testing.assert_array_equal(first.run({"x": big})["y"], 3 * big)
    with pytest.raises(ValueError, match="outside the engine's optimisation profile"):
        first.run({"x": np.ones((9, 4), np.float32)})

    second = TensorRTBackend(onnx_model(), cache_dir=tmp_path, max_batch=8, opt_batch=4)
    assert not second.built and trt10.stats["builds"] == 1 and trt10.stats["deserialized"] == 2
    np.testing.assert_array_equal(second.run1(x)["y"], 2 * x + 1)

    other = TensorRTBackend(onnx_model(), cache_dir=tmp_path, max_batch=8, opt_batch=4, precision="fp16")
    assert other.built and trt10.stats["builds"] == 2 and trt10.stats["builder_flags"][-1] == ["FP16"]
    assert other.engine_path != first.engine_path
    mixed = TensorRTBackend(onnx_model(), cache_dir=tmp_path, max_batch=8, opt_batch=4, fp16_fallback=True)
    assert mixed.built and trt10.stats["builds"] == 3 and trt10.stats["builder_flags"][-1] == ["FP16", "INT8"]
    assert len({first.engine_path, other.engine_path, mixed.engine_path}) == 3
    assert len(list(tmp_path.rglob("*.engine"))) == 3


def test_registry_prefers_tensorrt_for_onnx_when_installed(tmp_path, trt10):
    assert available_backends("onnx")[0] == "tensorrt"
    backend = load_backend(onnx_model(), "onnx", cache_dir=tmp_path)
    assert isinstance(backend, TensorRTBackend) and backend.name == "tensorrt"


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, trt10, caplog):
    first = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    first.engine_path.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="fiqa_runtimes.tensorrt_backend"):
        again = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    assert again.built and trt10.stats["builds"] == 2
    assert "could not be deserialized; rebuilding" in caplog.text
    assert again.engine_path.read_bytes().startswith(MAGIC)


def test_tensorrt11_builds_without_precision_flags(tmp_path, monkeypatch):
    trt = install_fakes(monkeypatch, "11.4.0.7")
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    assert trt.stats["network_flags"] == [0]  # strong typing is always on; its flag is deprecated and ignored
    assert trt.stats["builder_flags"] == [[]]  # the fake 11.x has no INT8/FP16 flags: setting one would fail
    assert "trt-11-4-0-7" in str(backend.engine_path)
    with pytest.raises(ValueError, match="AutoCast"):
        TensorRTBackend(onnx_model(), cache_dir=tmp_path, precision="fp16")


def test_tensorrt8_requests_explicit_batch(tmp_path, monkeypatch):
    trt = install_fakes(monkeypatch, "8.6.2.3")
    TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    assert trt.stats["network_flags"] == [1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)]


def test_model_problems_are_reported(tmp_path, trt10):
    with pytest.raises(ValueError, match="no QuantizeLinear"):
        TensorRTBackend(onnx_model(qdq=False), cache_dir=tmp_path)
    TensorRTBackend(onnx_model(qdq=False), cache_dir=tmp_path, precision="fp32")  # fine without Q/DQ
    with pytest.raises(ValueError, match="could not parse the ONNX model: ModelImporter"):
        TensorRTBackend(b"\x08\x07garbage", cache_dir=tmp_path)
    detector_like = onnx_model({"x": [1, 3, -1, -1]})
    with pytest.raises(ValueError, match=r"dynamic dims besides the batch.*profile_shapes"):
        TensorRTBackend(detector_like, cache_dir=tmp_path)
    shapes = {"x": ((1, 3, 32, 32), (1, 3, 480, 640), (1, 3, 736, 1280))}
    ok = TensorRTBackend(detector_like, cache_dir=tmp_path, profile_shapes=shapes)
    assert trt10.stats["profiles"][-1] == {"x": [[1, 3, 32, 32], [1, 3, 480, 640], [1, 3, 736, 1280]]}
    x = np.zeros((1, 3, 64, 96), np.float32)
    assert ok.run1(x)["y"].shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="optimisation profile"):
        ok.run1(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="opt_batch <= max_batch"):
        TensorRTBackend(onnx_model(), cache_dir=tmp_path, max_batch=4, opt_batch=8)


def test_run_checks_names_and_frees_buffers(tmp_path, trt10):
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    with pytest.raises(KeyError, match=r"missing \['x'\], unexpected \['z'\]"):
        backend.run({"z": np.zeros((1, 4), np.float32)})
    backend.run1(np.zeros((2, 4), np.float32))
    backend.run1(np.zeros((5, 4), np.float32))  # grows the buffers
    state = sys.modules["pycuda.driver"].state
    assert len(state["live"]) == 2 and state["freed"] == 2 and state["stack"] == []
    backend.close()
    assert state["live"] == {}


def test_cuda_python_when_pycuda_is_absent(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0"))
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    for name, module in fake_cuda_python().items():
        monkeypatch.setitem(sys.modules, name, module)
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    assert backend.key.gpu_name == "NVIDIA Jetson AGX Orin" and backend.key.compute_capability == (8, 7)
    assert backend.engine_path.parent.parent.name == "nvidia-jetson-agx-orin-sm87"
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(backend.run1(x)["y"], 2 * x + 1)
    for name, module in fake_cuda_python(fail_malloc=True).items():
        monkeypatch.setitem(sys.modules, name, module)
    failing = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="cudaErrorMemoryAllocation"):
        failing.run1(x)


def test_bindings_without_a_usable_gpu_make_auto_fall_back_to_onnxruntime(tmp_path, monkeypatch):
    """TensorRT and cuda-python installed, no GPU visible (a container, a driver problem): BackendUnavailable,
    so load_backend("auto") and a bundle's auto load go on to ONNX Runtime instead of raising a CUDA error."""
    from fiqa_sdk.bundle import BUNDLES_DIR, DEFAULT_BUNDLES

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0"))
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    for name, module in fake_cuda_python(no_device=True).items():
        monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(BackendUnavailable, match="GPU 0 cannot be used.*cudaErrorNoDevice"):
        TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    fp32 = BUNDLES_DIR / DEFAULT_BUNDLES["cpu"] / "student_fp32.onnx"
    assert available_backends("onnx")[0] == "tensorrt"
    assert load_backend(str(fp32), "onnx").name == "onnxruntime"


def test_bundle_build_settings_reach_the_engine_build(tmp_path, trt10):
    """The manifest's tensorrt.build section is what the engine is built with (fp16_fallback included)."""
    from fiqa_sdk.bundle import TensorRTSpec

    spec = TensorRTSpec.from_dict({"onnx": "student_qdq.onnx", "build": {
        "precision": "int8", "fp16_fallback": True, "max_batch": 4, "opt_batch": 1, "workspace_mb": 64}})
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path, **spec.backend_options())
    assert trt10.stats["builder_flags"] == [["FP16", "INT8"]]
    assert trt10.stats["profiles"] == [{"x": [[1, 4], [1, 4], [4, 4]]}]
    assert json.loads(backend.key.settings_json)["plan"][1] == ["INT8", "FP16"]


CACHE = b"TRT-100300-EntropyCalibration2\nx: 3c010204\ny: 3c8b4396\n"


def test_calibration_cache_builds_implicit_int8_from_the_float_onnx(tmp_path, trt10):
    float_model = onnx_model(qdq=False)
    with pytest.raises(ValueError, match="calibration_cache= for implicit INT8"):
        TensorRTBackend(float_model, cache_dir=tmp_path)
    cache_file = tmp_path / "trt_calibration.cache"
    cache_file.write_bytes(CACHE)
    backend = TensorRTBackend(float_model, cache_dir=tmp_path, calibration_cache=cache_file)
    assert backend.built and trt10.stats["builder_flags"] == [["INT8"]]
    assert trt10.stats["calibration_caches"] == [CACHE]
    np.testing.assert_array_equal(backend.run1(np.ones((2, 4), np.float32))["y"], np.full((2, 4), 3, np.float32))
    # the cache is part of the engine key: another cache builds another engine, the same one reuses it
    assert TensorRTBackend(float_model, cache_dir=tmp_path, calibration_cache=CACHE).built is False
    other = TensorRTBackend(float_model, cache_dir=tmp_path, calibration_cache=CACHE.replace(b"3c01", b"3c02"))
    assert other.built and other.engine_path != backend.engine_path


def test_calibration_cache_is_restamped_for_the_tensorrt_that_reads_it(tmp_path, monkeypatch):
    """TensorRT skips a cache stamped for another version; JetPack 6.0 (8.6) must get the scales a 10.3 stamp holds."""
    assert restamp_calibration_cache(CACHE, "8.6.2.3") == CACHE.replace(b"TRT-100300-", b"TRT-8602-")
    assert restamp_calibration_cache(CACHE, "10.3.0.30") == CACHE
    assert restamp_calibration_cache(b"TRT-8502-EntropyCalibration2", "10.3.0") == b"TRT-100300-EntropyCalibration2"
    with pytest.raises(ValueError, match="is not 'TRT-<version>-<calibrator>'"):
        restamp_calibration_cache(b"TRT-x-y\nx: 3c010204\n", "10.3.0")
    with pytest.raises(ValueError, match="TensorRT 5-10"):
        restamp_calibration_cache(CACHE, "11.0.0")
    trt8 = install_fakes(monkeypatch, "8.6.2.3")
    TensorRTBackend(onnx_model(qdq=False), cache_dir=tmp_path, calibration_cache=CACHE)
    assert trt8.stats["calibration_caches"] == [CACHE.replace(b"TRT-100300-", b"TRT-8602-")]


def test_calibration_cache_misuse_is_refused(tmp_path, trt10, monkeypatch):
    with pytest.raises(ValueError, match="already explicitly quantized"):
        TensorRTBackend(onnx_model(qdq=True), cache_dir=tmp_path, calibration_cache=CACHE)
    with pytest.raises(ValueError, match="not a TensorRT calibration cache"):
        TensorRTBackend(onnx_model(qdq=False), cache_dir=tmp_path, calibration_cache=b"{}")
    with pytest.raises(ValueError, match="only applies to precision='int8'"):
        TensorRTBackend(onnx_model(qdq=False), cache_dir=tmp_path, calibration_cache=CACHE, precision="fp32")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.4.0"))
    with pytest.raises(ValueError, match="removed implicit INT8 calibration"):
        TensorRTBackend(onnx_model(qdq=False), cache_dir=tmp_path, calibration_cache=CACHE)


def test_pycuda_context_is_current_for_every_tensorrt_call_and_restored_after(tmp_path, trt10):
    """The fake TensorRT asserts that the device's context is current in build, deserialize, execution-context
    creation and execute (as the real one needs for a GPU other than 0); the caller's stack is left as it was."""
    state = sys.modules["pycuda.driver"].state
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    again = TensorRTBackend(onnx_model(), cache_dir=tmp_path)  # deserialized from the cache
    assert backend.built and not again.built and state["stack"] == []
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(again.run1(x)["y"], 2 * x + 1)
    assert state["stack"] == []
    assert again.key.multiprocessors == 16


def test_host_copies_use_page_locked_buffers_and_results_are_not_overwritten(tmp_path, trt10):
    state = sys.modules["pycuda.driver"].state
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    first = backend.run1(np.ones((2, 4), np.float32))["y"]  # the fake copies refuse pageable host memory
    second = backend.run1(np.zeros((2, 4), np.float32))["y"]
    np.testing.assert_array_equal(first, np.full((2, 4), 3, np.float32))  # not the reused buffer's new contents
    np.testing.assert_array_equal(second, np.ones((2, 4), np.float32))
    strided = np.arange(16, dtype=np.float64).reshape(4, 4)[::2]  # non-contiguous, other dtype: staged, converted
    np.testing.assert_array_equal(backend.run1(strided)["y"], 2 * strided.astype(np.float32) + 1)
    assert len(state["pinned"]) == 2
    backend.close()
    assert state["pinned"] == {} and state["live"] == {} and state["pinned_freed"] == 2
    with pytest.raises(RuntimeError, match="closed"):
        backend.run1(np.ones((1, 4), np.float32))
    backend.close()  # twice is harmless


def test_threads_sharing_a_backend_each_get_their_own_batch_back(tmp_path, trt10):
    """One execution context and one set of buffers, four threads with batches of different sizes (so the buffers
    also grow under them): every call must return 2x+1 of its own input, none another thread's."""
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    wrong, errors, per_thread = [], [], 250

    def worker(thread: int) -> None:
        for call in range(per_thread):
            x = np.full((1 + (thread + call) % 6, 4), thread * 100 + call, np.float32)
            try:
                if not np.array_equal(backend.run1(x)["y"], 2 * x + 1):
                    wrong.append((thread, call))
            except Exception as e:  # noqa: BLE001 -- reported below
                errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as Python can, so an unserialised call is caught mid-way
    try:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, f"{len(errors)} of {4 * per_thread} calls raised, e.g. {errors[0]!r}"
    assert not wrong, f"{len(wrong)} of {4 * per_thread} calls returned another batch's outputs"
    backend.close()
    assert sys.modules["pycuda.driver"].state["live"] == {}


def test_cuda_python_second_gpu_used_from_another_thread(tmp_path, monkeypatch):
    """CUDA's current device is per host thread: a backend made for GPU 1 must work when called from a thread
    that never chose a device (it would allocate and launch on GPU 0), and leave every thread's device as it was."""
    trt = fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    modules = fake_cuda_python()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    rt = modules["cuda.bindings.runtime"]
    trt.context_is_current = lambda: rt.current() == 1
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path, device=1)
    assert rt.current() == 0
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    results, errors = [], []

    def worker():
        try:
            results.append(backend.run1(x)["y"])
            results.append(rt.current())
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not errors, errors
    np.testing.assert_allclose(results[0], 2 * x + 1)
    assert results[1] == 0 and rt.current() == 0
    backend.close()
    assert rt.state["destroyed"] == 1 and rt.state["pinned"] == {} and rt.state["device_of"] == {}
    with pytest.raises(BackendUnavailable, match="GPU 2 cannot be used.*cudaErrorInvalidDevice"):
        TensorRTBackend(onnx_model(), cache_dir=tmp_path, device=2)


def test_a_failed_buffer_resize_leaves_the_backend_usable_and_closable(tmp_path, trt10, monkeypatch):
    """Out of memory while growing a buffer (a Jetson shares RAM with the GPU): that call fails, the next smaller
    one still runs, and close() frees everything once."""
    drv = sys.modules["pycuda.driver"]
    backend = TensorRTBackend(onnx_model(), cache_dir=tmp_path)
    small = np.ones((1, 4), np.float32)
    backend.run1(small)
    real = drv.mem_alloc

    def out_of_memory(nbytes):
        raise MemoryError("cuMemAlloc failed: out of memory")

    monkeypatch.setattr(drv, "mem_alloc", out_of_memory)
    with pytest.raises(MemoryError, match="out of memory"):
        backend.run1(np.ones((8, 4), np.float32))
    monkeypatch.setattr(drv, "mem_alloc", real)
    np.testing.assert_array_equal(backend.run1(small)["y"], 3 * small)
    backend.close()
    assert drv.state["live"] == {} and drv.state["pinned"] == {} and drv.state["stack"] == []


@pytest.mark.parametrize("version, flags", [("10.3.0.30", ["FP16"]), ("11.4.0.7", [])])
def test_retinaface_on_tensorrt_builds_one_engine_for_every_frame_size(tmp_path, monkeypatch, version, flags):
    """The detector's frame size varies (and the refinement view is 250x250): one dynamic-shape engine from 32x32
    to a padded square of max_side, fp16 where TensorRT takes the flag, the ONNX's own types on TensorRT 11."""
    from fiqa_sdk import detection

    trt = install_fakes(monkeypatch, version)
    monkeypatch.setattr(detection, "retinaface_onnx_bytes",
                        lambda: onnx_model({detection.RETINAFACE_INPUT: [-1, 3, -1, -1]}, qdq=False))
    monkeypatch.setenv("FIQA_CACHE", str(tmp_path))
    det = detection.RetinaFaceDetector(backend="tensorrt", max_side=320)
    assert det.backend_name == "tensorrt" and trt.stats["builder_flags"] == [flags]
    assert trt.stats["profiles"] == [{"input": [[1, 3, 32, 32], [1, 3, 256, 320], [1, 3, 320, 320]]}]
    # the automatic size: up to 640 for HD frames, tuned for what a 640x480 camera sends (320 wide)
    assert detection.tensorrt_options(None)["profile_shapes"]["input"] == ((1, 3, 32, 32), (1, 3, 256, 320),
                                                                           (1, 3, 640, 640))
    det.close()
    assert sys.modules["pycuda.driver"].state["live"] == {}
    assert list(tmp_path.rglob("*.engine"))  # cached under $FIQA_CACHE like the scorer's engine
    small = detection.tensorrt_options(100)["profile_shapes"]["input"]
    assert small[2] == (1, 3, 256, 256)  # never smaller than the refinement view
