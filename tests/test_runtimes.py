"""The runtime layer: registry rules, and every backend computing the same numbers as a reference.

Models are built inside the tests (onnx.helper graphs, a torch module converted by litert-torch, a
full-INT8 TFLite flatbuffer written with the LiteRT schema), so nothing is downloaded or shipped.
"""
from __future__ import annotations

import numpy as np
import pytest

import fiqa_runtimes.base as base
from fiqa_runtimes import BackendUnavailable, ModelFormat, available_backends, load_backend
from fiqa_runtimes.litert_backend import _dequantize, _quantize

RNG = np.random.default_rng(0)
W_CONV = RNG.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
B_CONV = RNG.normal(0, 0.1, 4).astype(np.float32)
W_FC = RNG.normal(0, 0.5, (2, 4)).astype(np.float32)
B_FC = RNG.normal(0, 0.1, 2).astype(np.float32)


def _reference(x: np.ndarray) -> np.ndarray:
    """Conv3x3(pad 1) -> ReLU -> global mean -> Linear, in plain numpy."""
    n, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, 4, h, w), np.float64)
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, dy:dy + h, dx:dx + w], W_CONV[:, :, dy, dx])
    out = np.maximum(out + B_CONV[None, :, None, None], 0).mean((2, 3))
    return (out @ W_FC.T + B_FC).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(W_CONV, "wc"), (B_CONV, "bc"), (W_FC, "wf"), (B_FC, "bf")]]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def two_input_onnx() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Sub", ["a", "b"], ["d"])
    graph = helper.make_graph([node], "sub", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4])
                                              for n in ("a", "b")],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


# ---- registry ---------------------------------------------------------------------------------------

def test_available_backends_by_format_in_preference_order():
    onnx_backends = available_backends(ModelFormat.ONNX)
    # both installed here, ORT preferred (TensorRT, on a Jetson, would come first)
    assert [b for b in onnx_backends if b in ("onnxruntime", "opencv")] == ["onnxruntime", "opencv"]
    assert "litert" in available_backends("tflite")
    assert not set(available_backends("tflite")) & {"onnxruntime", "opencv"}
    assert set(available_backends()) >= {"onnxruntime", "opencv", "litert"}


def test_load_backend_rejects_unknown_names_and_format_mismatches(tiny_onnx):
    with pytest.raises(ValueError, match="unknown backend 'coreml'"):
        load_backend(tiny_onnx, "onnx", backend="coreml")
    with pytest.raises(ValueError, match=r"runs \['tflite'\] models, not onnx"):
        load_backend(tiny_onnx, "onnx", backend="litert")
    with pytest.raises(ValueError, match=r"runs \['onnx'\] models, not tflite"):
        load_backend(b"", "tflite", backend="onnxruntime")
    with pytest.raises(ValueError, match="'pb'"):
        load_backend(tiny_onnx, "pb")


def test_missing_engines_raise_backend_unavailable_with_install_hint(tiny_onnx, monkeypatch):
    monkeypatch.setattr(base, "_installed", lambda module: False)
    with pytest.raises(BackendUnavailable, match="'onnxruntime'"):
        load_backend(tiny_onnx, "onnx", backend="onnxruntime")
    with pytest.raises(BackendUnavailable, match=r"pip install onnxruntime: fiqa-sdk's 'onnx' extra"):
        load_backend(tiny_onnx, "onnx")
    with pytest.raises(BackendUnavailable, match=r"pip install ai-edge-litert: fiqa-sdk's 'tflite' extra"):
        load_backend(b"", "tflite")
    assert available_backends() == []


# ---- ONNX: ONNX Runtime and OpenCV DNN ------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_and_opencv_match_numpy_reference(tiny_onnx, batch):
    x = np.random.default_rng(batch).normal(size=(batch, 3, 8, 8)).astype(np.float32)
    ref = _reference(x)
    outs = {}
    for name in ("onnxruntime", "opencv"):
        be = load_backend(tiny_onnx, "onnx", backend=name, threads=1)
        assert be.name == name and be.output_names == ["y"]
        outs[name] = be.run1(x)["y"]
        assert outs[name].dtype == np.float32 and outs[name].shape == (batch, 2)
        np.testing.assert_allclose(outs[name], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outs["onnxruntime"], outs["opencv"], rtol=1e-5, atol=1e-6)


def test_auto_picks_onnxruntime_and_reads_model_paths(tiny_onnx, tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_onnx)
    be = load_backend(str(path), "onnx")
    assert be.name == "onnxruntime" and be.input_names == ["x"]
    x = np.ones((1, 3, 8, 8), np.float32)
    np.testing.assert_allclose(be.run1(x)["y"], _reference(x), rtol=1e-4, atol=1e-5)


def test_multi_input_models_are_fed_by_name(two_input_onnx):
    a, b = np.arange(4, dtype=np.float32)[None], np.full((1, 4), 10, np.float32)
    ort = load_backend(two_input_onnx, "onnx", backend="onnxruntime")
    assert ort.input_names == ["a", "b"]
    with pytest.raises(ValueError, match="call run\\(\\) with a dict"):
        ort.run1(a)
    cv = load_backend(two_input_onnx, "onnx", backend="opencv", input_names=["a", "b"])
    for be in (ort, cv):
        np.testing.assert_array_equal(be.run({"b": b, "a": a})["d"], a - b)


# ---- LiteRT -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_tflite(tmp_path_factory):
    """The same tiny network as the ONNX model, converted by litert-torch (NCHW I/O, as it exports).

    Channels-last inputs are covered by the hand-written INT8 model below."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)
            with torch.no_grad():
                self.conv.weight.copy_(torch.from_numpy(W_CONV))
                self.conv.bias.copy_(torch.from_numpy(B_CONV))
                self.fc.weight.copy_(torch.from_numpy(W_FC))
                self.fc.bias.copy_(torch.from_numpy(B_FC))

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    litert_torch.convert(Tiny().eval(), (torch.zeros(1, 3, 8, 8),)).export(str(path))
    return path


def test_litert_runs_converted_float_model_like_the_reference(torch_tflite):
    be = load_backend(str(torch_tflite), "tflite", backend="litert", threads=1)
    assert be.name == "litert"
    for batch in (1, 3, 1):  # resizing the batch both ways re-allocates tensors
        x = np.random.default_rng(batch).normal(size=(batch, 3, 8, 8)).astype(np.float32)
        (y,) = be.run1(x).values()
        assert y.shape == (batch, 2) and y.dtype == np.float32
        np.testing.assert_allclose(y, _reference(x), rtol=1e-4, atol=1e-5)


def test_litert_rejects_inputs_that_fit_no_layout(torch_tflite):
    be = load_backend(torch_tflite.read_bytes(), "tflite", backend="litert")
    with pytest.raises(ValueError, match="does not fit"):
        be.run1(np.zeros((1, 5, 8, 8), np.float32))
    with pytest.raises(KeyError, match="no input 'nope'"):
        be.run({"nope": np.zeros((1, 3, 8, 8), np.float32), "other": np.zeros((1, 3, 8, 8), np.float32)})


IN_SCALE, IN_ZERO, OUT_SCALE, OUT_ZERO = 0.02, -5, 0.05, 3
W_INT8 = np.random.default_rng(7).integers(-127, 128, (3, 1, 1, 2)).astype(np.int8)
W_SCALES = np.array([0.01, 0.02, 0.015], np.float32)
B_INT32 = np.random.default_rng(8).integers(-500, 500, 3).astype(np.int32)


@pytest.fixture(scope="module")
def int8_tflite() -> bytes:
    """A full-INT8 1x1 convolution (int8 NHWC input and output, per-channel int8 weights, int32 bias),
    written with the LiteRT flatbuffer schema: the layout a full-integer student has on a phone."""
    flatbuffers = pytest.importorskip("flatbuffers")
    s = pytest.importorskip("ai_edge_litert.schema_py_generated")

    def quant(scale, zero, dim=0):
        q = s.QuantizationParametersT()
        q.scale = [float(v) for v in np.atleast_1d(scale)]
        q.zeroPoint = [int(v) for v in np.atleast_1d(zero)]
        q.quantizedDimension = dim
        return q

    def tensor(name, shape, ttype, buf, q):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer, t.quantization = name, list(shape), ttype, buf, q
        return t

    def buffer(arr=None):
        b = s.BufferT()
        if arr is not None:
            b.data = list(np.ascontiguousarray(arr).tobytes())
        return b

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CONV_2D
    code.version = 3
    graph = s.SubGraphT()
    graph.name = "main"
    graph.tensors = [tensor("x", [1, 4, 4, 2], s.TensorType.INT8, 1, quant(IN_SCALE, IN_ZERO)),
                     tensor("w", W_INT8.shape, s.TensorType.INT8, 2, quant(W_SCALES, np.zeros(3))),
                     tensor("b", [3], s.TensorType.INT32, 3, quant(W_SCALES * IN_SCALE, np.zeros(3))),
                     tensor("y", [1, 4, 4, 3], s.TensorType.INT8, 4, quant(OUT_SCALE, OUT_ZERO))]
    graph.inputs, graph.outputs = [0], [3]
    opts = s.Conv2DOptionsT()
    opts.padding = s.Padding.VALID
    opts.strideW = opts.strideH = opts.dilationWFactor = opts.dilationHFactor = 1
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.Conv2DOptions, opts
    graph.operators = [op]
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [buffer(), buffer(), buffer(W_INT8), buffer(B_INT32), buffer()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_litert_full_int8_model_takes_and_returns_float(int8_tflite):
    be = load_backend(int8_tflite, "tflite", backend="litert", threads=1)
    assert be.input_details[0]["dtype"] == np.int8
    x = np.random.default_rng(2).uniform(-1.5, 1.5, (2, 2, 4, 4)).astype(np.float32)  # NCHW, batch 2
    y = be.run1(x)["y"]
    assert y.dtype == np.float32 and y.shape == (2, 4, 4, 3)
    # reference: the same arithmetic in float on the quantised input
    xq = (np.clip(np.round(x / IN_SCALE + IN_ZERO), -128, 127) - IN_ZERO) * IN_SCALE
    w = W_INT8[:, 0, 0, :].astype(np.float32) * W_SCALES[:, None]
    ref = np.einsum("nchw,oc->nhwo", xq, w) + B_INT32 * W_SCALES * IN_SCALE
    ref = np.clip(ref, (-128 - OUT_ZERO) * OUT_SCALE, (127 - OUT_ZERO) * OUT_SCALE)
    np.testing.assert_allclose(y, ref, atol=OUT_SCALE / 2 + 1e-6)
    assert np.abs(y - ref).max() > 0  # it did go through int8: outputs sit on the output grid
    np.testing.assert_allclose((y / OUT_SCALE + OUT_ZERO), np.round(y / OUT_SCALE + OUT_ZERO), atol=1e-3)


def test_litert_int8_model_takes_its_integers_as_they_are(int8_tflite):
    """run_quantized: the caller writes the int8 input itself (fiqa_sdk's lean path); same outputs as run() on the
    floats those integers stand for, batch resized as needed, the buffer reused per batch size."""
    be = load_backend(int8_tflite, "tflite", backend="litert", threads=1)
    qin = be.quantized_input
    assert (qin.name, qin.dtype, qin.zero_point, qin.shape) == ("x", np.int8, IN_ZERO, (1, 4, 4, 2))
    assert qin.scale == pytest.approx(IN_SCALE)
    q = np.random.default_rng(3).integers(-128, 128, (3, 4, 4, 2)).astype(np.int8)
    buffers = []

    def fill(buf):
        buffers.append(buf)
        buf[...] = q

    got = be.run_quantized(3, fill)["y"]
    floats = ((q.astype(np.float32) - IN_ZERO) * qin.scale).transpose(0, 3, 1, 2)  # NCHW, as run() takes them
    np.testing.assert_array_equal(got, be.run1(floats)["y"])
    assert buffers[0].shape == (3, 4, 4, 2) and buffers[0].dtype == np.int8
    np.testing.assert_array_equal(be.run_quantized(3, fill)["y"], got)
    assert buffers[1] is buffers[0]  # kept for the batch size
    one = be.run_quantized(1, lambda buf: np.copyto(buf, q[:1]))["y"]  # resized down: a new buffer
    np.testing.assert_array_equal(one, got[:1])
    np.testing.assert_array_equal(qin.quantize(np.array([-9.0, 0.0, 0.031, 9.0], np.float32)), [-128, -5, -3, 127])


def test_float_and_onnx_models_take_no_quantized_input(tiny_onnx, torch_tflite):
    assert load_backend(str(torch_tflite), "tflite", backend="litert", threads=1).quantized_input is None
    be = load_backend(tiny_onnx, "onnx", backend="onnxruntime", threads=1)
    assert be.quantized_input is None
    with pytest.raises(TypeError, match="no quantised input"):
        be.run_quantized(1, lambda buf: None)


def test_quantize_dequantize_round_trip_and_saturation():
    detail = {"name": "t", "dtype": np.int8, "quantization": (0.1, -3)}
    x = np.array([-20.0, -12.5, -0.04, 0.0, 0.06, 3.33, 12.4, 50.0], np.float32)
    q = _quantize(x, detail)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, [-128, -128, -3, -3, -2, 30, 121, 127])
    back = _dequantize(q, detail)
    inside = (x > (-128 + 3) * 0.1) & (x < (127 + 3) * 0.1)
    assert np.abs(back - x)[inside].max() <= 0.05 + 1e-6
    np.testing.assert_allclose(back[~inside], [-12.5, -12.5, 13.0])
    u8 = {"name": "u", "dtype": np.uint8, "quantization": (0.5, 128)}
    np.testing.assert_array_equal(_quantize(np.array([-70.0, 0.0, 1.0, 70.0]), u8), [0, 128, 130, 255])
    f32 = {"name": "f", "dtype": np.float32, "quantization": (0.0, 0)}
    assert _quantize(x.astype(np.float64), f32).dtype == np.float32
    with pytest.raises(ValueError, match="no quantisation parameters"):
        _quantize(x, {"name": "bad", "dtype": np.int8, "quantization": (0.0, 0)})
