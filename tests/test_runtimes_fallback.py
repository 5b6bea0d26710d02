"""Runtimes that are found but cannot start: a broken install and TensorRT's INT8 default on a float graph must
make ``auto`` (and the embedded default bundle) move on, not raise; a Scorer that fails its set-up releases its
engine."""
from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from test_tensorrt_backend import install_fakes, onnx_model

import fiqa_runtimes.base as base
from fiqa_runtimes import BackendUnavailable, load_backend
from fiqa_runtimes.onnxruntime_backend import OnnxRuntimeBackend
from fiqa_runtimes.tensorrt_backend import TensorRTBackend
from fiqa_sdk.bundle import BUNDLES_DIR, DEFAULT_BUNDLES, default_bundle_path
from fiqa_sdk.detection import Detector
from fiqa_sdk.scorer import Scorer

CPU = BUNDLES_DIR / DEFAULT_BUNDLES["cpu"]
ANDROID = BUNDLES_DIR / DEFAULT_BUNDLES["android-arm64"]


def break_module(monkeypatch, tmp_path: Path, name: str, error: str) -> None:
    """Shadow the installed ``name`` with a package whose import raises ``error`` (e.g. a missing .so)."""
    pkg = tmp_path / "broken" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise {error}\n")
    monkeypatch.syspath_prepend(str(pkg.parent))
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    importlib.invalidate_caches()


def test_a_broken_engine_is_unavailable_and_auto_falls_back(tmp_path, monkeypatch):
    break_module(monkeypatch, tmp_path, "onnxruntime",
                 "ImportError('libonnxruntime.so.1: cannot open shared object file')")
    model = (CPU / "student_fp32.onnx").read_bytes()
    with pytest.raises(BackendUnavailable, match=r"'onnxruntime' is installed but failed to load "
                                                 r"\(ImportError: libonnxruntime\.so\.1.*pip install onnxruntime"):
        load_backend(model, "onnx", backend="onnxruntime")
    assert load_backend(model, "onnx").name == "opencv"


def test_an_oserror_from_the_engine_constructor_is_unavailable(tmp_path, monkeypatch):
    def missing_library(self, model, **options):
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(OnnxRuntimeBackend, "__init__", missing_library)
    model = (CPU / "student_fp32.onnx").read_bytes()
    with pytest.raises(BackendUnavailable, match=r"OSError: libnvinfer\.so\.10"):
        load_backend(model, "onnx", backend="onnxruntime")
    assert load_backend(model, "onnx").name == "opencv"


@pytest.mark.parametrize("error", [FileNotFoundError(2, "No such file", "/nonexistent/trt_calibration.cache"),
                                   ModuleNotFoundError("No module named 'fiqa_runtimes.helpers'",
                                                       name="fiqa_runtimes.helpers")])
def test_a_bad_file_argument_or_a_bug_in_fiqa_is_not_called_a_broken_engine(monkeypatch, error):
    """Only the engine library failing to load means 'reinstall it' (and lets auto move on); a missing file the
    caller named, or a fiqa module that does not import, surfaces as itself."""
    def fails(self, model, **options):
        raise error

    monkeypatch.setattr(OnnxRuntimeBackend, "__init__", fails)
    model = (CPU / "student_fp32.onnx").read_bytes()
    for backend in ("onnxruntime", "auto"):
        with pytest.raises(type(error)) as raised:
            load_backend(model, "onnx", backend=backend)
        assert raised.value is error


def test_a_missing_model_file_is_not_mistaken_for_a_broken_engine(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_backend(str(tmp_path / "nope.onnx"), "onnx")


def test_default_scorer_falls_back_to_the_cpu_bundle_when_litert_is_broken(tmp_path, monkeypatch, caplog):
    break_module(monkeypatch, tmp_path, "ai_edge_litert", "OSError('libLiteRt.so: undefined symbol')")
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)  # not installed here either way
    assert default_bundle_path() == ANDROID  # found, so still the first choice
    with caplog.at_level(logging.WARNING, logger="fiqa_sdk.scorer"):
        scorer = Scorer(detector=None, threads=1)
    assert scorer.info.target == "cpu" and scorer.info.backend == "onnxruntime"
    assert "default-android-arm64: no runtime could load it" in caplog.text and "libLiteRt.so" in caplog.text
    assert len(scorer.score(np.zeros((112, 112, 3), np.uint8))) == 1
    scorer.close()


def test_a_named_backend_on_the_default_bundle_raises_its_own_error(tmp_path, monkeypatch):
    break_module(monkeypatch, tmp_path, "ai_edge_litert", "OSError('libLiteRt.so: undefined symbol')")
    with pytest.raises(BackendUnavailable, match="libLiteRt.so"):
        Scorer(backend="litert", detector=None)


# -- TensorRT in auto mode --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version, flags", [("10.3.0", ["FP16"]), ("11.4.0", [])])
def test_auto_builds_a_float_graph_in_a_float_precision(tmp_path, monkeypatch, version, flags):
    trt = install_fakes(monkeypatch, version)
    backend = load_backend(onnx_model(qdq=False), "onnx", cache_dir=tmp_path)
    assert isinstance(backend, TensorRTBackend)
    assert trt.stats["builder_flags"] == [flags]
    backend.close()


def test_auto_keeps_a_precision_the_caller_chose(tmp_path, monkeypatch):
    install_fakes(monkeypatch, "10.3.0")
    with pytest.raises(ValueError, match="no QuantizeLinear nodes"):
        load_backend(onnx_model(qdq=False), "onnx", cache_dir=tmp_path, precision="int8")


def test_qdq_graphs_are_told_from_float_ones_by_their_bytes():
    qdq, fp32 = (CPU / "student_qdq.onnx").read_bytes(), (CPU / "student_fp32.onnx").read_bytes()
    assert base.has_qdq_nodes(qdq) and not base.has_qdq_nodes(fp32)
    assert base._auto_options("tensorrt", qdq, {"threads": 1}) == {"threads": 1, "precision": "int8"}
    assert base._auto_options("onnxruntime", fp32, {}) == {}


# -- Scorer set-up failures -------------------------------------------------------------------------------------------

class _FakeDetector(Detector):
    name = "fake"

    def __init__(self) -> None:
        self.closed = 0

    def _detect_bgr(self, frame):
        return []

    def close(self) -> None:
        self.closed += 1


def _count_engine_closes(monkeypatch) -> list[object]:
    closed: list[object] = []
    monkeypatch.setattr(OnnxRuntimeBackend, "close", lambda self: closed.append(self))
    return closed


def test_a_failing_detector_releases_the_loaded_engine(monkeypatch):
    closed = _count_engine_closes(monkeypatch)
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        Scorer(CPU, backend="onnxruntime", detector="nope")
    assert len(closed) == 1 and isinstance(closed[0], OnnxRuntimeBackend)


def test_a_failing_warm_up_releases_the_engine_and_the_detector_it_made(monkeypatch):
    closed = _count_engine_closes(monkeypatch)
    detector = _FakeDetector()
    monkeypatch.setattr("fiqa_sdk.scorer.create_detector", lambda name, **options: detector)

    def broken_run(self, inputs):
        raise RuntimeError("engine fault")

    monkeypatch.setattr(OnnxRuntimeBackend, "run", broken_run)
    with pytest.raises(RuntimeError, match="engine fault"):
        Scorer(CPU, backend="onnxruntime", detector="retinaface")
    assert len(closed) == 1 and detector.closed == 1
    passed_in = _FakeDetector()
    with pytest.raises(RuntimeError, match="engine fault"):
        Scorer(CPU, backend="onnxruntime", detector=passed_in)
    assert len(closed) == 2 and passed_in.closed == 0  # the caller's detector stays the caller's to close


# -- an installed engine that refuses the model -----------------------------------------------------------------------

def test_a_model_the_engine_refuses_makes_auto_move_on_and_a_named_backend_say_where(tmp_path, caplog):
    """A bundle whose ONNX opset is newer than the installed ONNX Runtime: ``auto`` moves on (to OpenCV, whose
    importer does not check the stamp) with a warning naming bundle, file and engine; asked for by name, the error
    names all three and the fix."""
    from bundle_fixtures import newer_opset_bundle

    bundle = newer_opset_bundle(tmp_path / "newer")
    model = (bundle / "student_fp32.onnx").read_bytes()
    assert load_backend(model, "onnx").name == "opencv"
    with pytest.raises(BackendUnavailable, match=r"onnxruntime [\d.]+ could not load the model \(Fail: .*Opset 99"):
        load_backend(model, "onnx", backend="onnxruntime")

    with caplog.at_level(logging.WARNING, logger="fiqa_sdk.bundle"):
        scorer = Scorer(bundle, detector=None, threads=1)
    assert scorer.info.backend == "opencv" and scorer.info.model_file == "student_fp32.onnx"
    assert len(scorer.score(np.zeros((112, 112, 3), np.uint8))) == 1
    scorer.close()
    warned = [r.getMessage() for r in caplog.records if r.name == "fiqa_sdk.bundle"]
    assert any(f"bundle {bundle} " in w and "backend onnxruntime unavailable for student_qdq.onnx" in w
               and "Opset 99" in w for w in warned), warned

    with pytest.raises(BackendUnavailable) as raised:
        Scorer(bundle, backend="onnxruntime", detector=None)
    message = str(raised.value)
    assert message.startswith(f"bundle {bundle}: model file student_qdq.onnx on backend onnxruntime: onnxruntime ")
    assert "upgrade onnxruntime, pick another backend, or rebuild the bundle" in message


class _NewerOpsInterpreter:
    """What LiteRT says of a model with an operator it does not have yet."""

    def __init__(self, model_content, num_threads=None):
        raise RuntimeError("Didn't find op for builtin opcode 'STABLEHLO_COMPOSITE' version '1'. An older version of "
                           "this builtin might be supported. Are you using an old TFLite binary with a newer model?")


def test_a_tflite_model_litert_refuses_is_named_with_its_bundle_and_file(monkeypatch, caplog):
    from fiqa_runtimes.litert_backend import LiteRTBackend

    monkeypatch.setattr(LiteRTBackend, "_interpreter_class", staticmethod(lambda: _NewerOpsInterpreter))
    with pytest.raises(BackendUnavailable) as raised:
        Scorer(ANDROID, backend="litert", detector=None)
    message = str(raised.value)
    assert message.startswith(f"bundle {ANDROID}: model file student_int8.tflite on backend litert: litert ")
    assert "STABLEHLO_COMPOSITE" in message
    with pytest.raises(BackendUnavailable, match=rf"no backend could load a model of bundle {ANDROID}: "
                                                 r"litert/student_int8\.tflite: litert .*STABLEHLO_COMPOSITE"):
        Scorer(ANDROID, detector=None)
    with caplog.at_level(logging.WARNING, logger="fiqa_sdk.scorer"):
        scorer = Scorer(detector=None, threads=1)  # the embedded defaults: on to the cpu bundle
    assert scorer.info.target == "cpu" and "default-android-arm64: no runtime could load it" in caplog.text
    scorer.close()
