"""INT8 stages on a briefly fitted student and real (degraded) faces: Q/DQ ONNX for TensorRT, the TensorRT
calibration cache, the offline TensorRT check, activation-range calibrators and full-INT8 TFLite."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import spearmanr

from fiqa_calibration.calibration_set import build_calibration_set
from fiqa_compile.export.calibrators import (
    ArrayCalibrationReader,
    CalibrationError,
    compute_activation_ranges,
    entropy_amax,
    read_trt_calibration_cache,
    trt_version_number,
)
from fiqa_compile.export.onnx_export import run_onnx
from fiqa_compile.export.qdq import build_qdq
from fiqa_compile.export.tflite import convert_float, convert_int8, inspect_tflite
from fiqa_compile.export.trt_check import check_tensorrt_compat
from fiqa_runtimes import load_backend
from fiqa_sdk.preprocess import faces_to_tensor
from student_fixtures import exported_onnx, face_pool, fitted_student


@pytest.fixture(scope="module")
def data(retinaface_ort):
    """300-face stratified calibration set; every other face (held out, every kind and severity) for checks: the
    test student is briefly fitted, so its INT8 rank agreement over 64 faces varies by +-0.01 with the sample."""
    pool = face_pool()
    calib = build_calibration_set(pool.faces, pool.kinds, pool.severity, size=300, detector=retinaface_ort)
    rest = np.setdiff1d(np.arange(len(pool.faces)), calib.source_index)
    return calib.tensors, faces_to_tensor(pool.faces[rest])


@pytest.fixture(scope="module")
def qdq(data, tmp_path_factory):
    calib, check = data
    out = tmp_path_factory.mktemp("qdq")
    return build_qdq(exported_onnx(), out / "student.qdq.onnx", calib, method="percentile",
                     trt_cache_path=out / "trt.cache", trt_version="8.6.2", check_inputs=check)


@pytest.fixture(scope="module")
def tflite(data, tmp_path_factory):
    calib, check = data
    out = tmp_path_factory.mktemp("tflite")
    return (convert_float(fitted_student(), out / "f32.tflite", check_inputs=check[:8]),
            convert_int8(fitted_student(), out / "int8.tflite", calib, check_inputs=check))


def _inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


# ------------------------------------------------------------------------------------------ Q/DQ ONNX
def test_qdq_zero_points_are_all_int8_zero(qdq):
    model = onnx.load(qdq.qdq_path)
    inits = _inits(model)
    qdq_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq_nodes) > 20
    for n in qdq_nodes:
        assert len(n.input) == 3, f"{n.name} has no zero point (ONNX would default to uint8)"
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8, n.name
        assert not numpy_helper.to_array(zp).any(), f"{n.name}: non-zero zero point"
        assert (numpy_helper.to_array(inits[n.input[1]]) > 0).all()


def test_qdq_weights_are_per_channel_on_the_output_axis(qdq):
    model = onnx.load(qdq.qdq_path)
    inits = _inits(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert layers
    for layer in layers:
        dq = producer[layer.input[1]]
        assert dq.op_type == "DequantizeLinear", f"{layer.name} has float weights"
        w = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert w.dtype == np.int8 and axis == 0 and scale.shape == (w.shape[0],), layer.name
        # Symmetric per-channel: each channel uses its int8 range (+-127) fully, to within rounding.
        assert (np.abs(w.reshape(len(w), -1)).max(1) >= 126).mean() > 0.9
    assert len(layers) == len(qdq.scan.per_channel_weights) and not qdq.scan.per_tensor_weights


def test_qdq_int8_tracks_fp32_on_real_faces(qdq, data):
    _, check = data
    ref, got = run_onnx(exported_onnx(), check), run_onnx(qdq.qdq_path, check)
    assert ref.std(0).min() > 0.05  # varied scores: the comparison means something
    for j in range(2):
        assert spearmanr(ref[:, j], got[:, j])[0] > 0.95, j
    assert qdq.fidelity is not None and qdq.fidelity.min_srcc > 0.95


def test_trt_calibration_cache_matches_qdq_scales(qdq):
    cache = read_trt_calibration_cache(qdq.trt_cache_path)
    assert cache.version_number == 8602 and cache.algorithm == "EntropyCalibration2"
    fp32 = onnx.load(str(exported_onnx()))
    activations = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
    assert set(cache.scales) == activations  # every tensor TensorRT will see, named as in the fp32 ONNX
    # Every activation scale in the Q/DQ model, read straight from its QuantizeLinear nodes...
    model = onnx.load(qdq.qdq_path)
    inits = _inits(model)
    qscales = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            name = n.input[0].removesuffix("_QuantizeLinear_Input")
            qscales[name] = float(numpy_helper.to_array(inits[n.input[1]]))
    assert len(qscales) > 10 and set(qscales) <= set(cache.scales)
    for name, s in qscales.items():
        assert np.float32(cache.scales[name]) == np.float32(s), name
    # ...and the rest are amax/127 of the calibrated ranges.
    for name in set(cache.scales) - set(qscales):
        assert np.isclose(cache.scales[name], qdq.ranges.amax(name) / 127, rtol=1e-6) or qdq.ranges.amax(name) == 0


def test_auto_method_keeps_the_most_faithful_and_head_can_stay_float(data, tmp_path):
    calib, check = data
    res = build_qdq(exported_onnx(), tmp_path / "h.onnx", calib[::3], method="auto", keep_head_float=True,
                    check_inputs=check)
    assert set(res.candidates) == {"minmax", "percentile", "entropy"}
    best = max(c["srcc"]["utility"] if c["srcc"]["utility"] < c["srcc"]["perceptual"] else c["srcc"]["perceptual"]
               for c in res.candidates.values())
    assert res.fidelity.min_srcc == pytest.approx(best) and res.candidates[res.ranges.method.value]["srcc"] == \
        res.fidelity.srcc
    assert res.fidelity.min_srcc > 0.9
    gemms = [n.name for n in onnx.load(str(tmp_path / "h.onnx")).graph.node if n.op_type == "Gemm"]
    assert len(res.excluded_nodes) == 3 and set(res.scan.float_weight_layers) == set(gemms[-2:])
    with pytest.raises(ValueError, match="check_inputs"):
        build_qdq(exported_onnx(), tmp_path / "x.onnx", calib[:32], method="auto")
    report = check_tensorrt_compat(tmp_path / "h.onnx")
    assert report.ok and {w.rule for w in report.warnings} == {"float-layer"}


def test_mirror_average_fidelity_compares_the_face_and_mirror_means(data, qdq, tmp_path):
    """With mirror_average the Q/DQ model is judged (and auto chooses) on what a mirror_average bundle scores."""
    from fiqa_compile.export.fidelity import compare_scores
    from fiqa_compile.export.onnx_export import run_onnx
    from fiqa_sdk.preprocess import mirror_mean, with_mirror

    calib, check = data
    res = build_qdq(exported_onnx(), tmp_path / "m.onnx", calib, method="percentile", check_inputs=check,
                    mirror_average=True)
    mean = mirror_mean(run_onnx(exported_onnx(), with_mirror(check)))
    expected = compare_scores(mean, mirror_mean(run_onnx(tmp_path / "m.onnx", with_mirror(check))))
    assert res.fidelity.n == len(check) and res.fidelity.srcc == pytest.approx(expected.srcc)
    assert res.fidelity.srcc != pytest.approx(qdq.fidelity.srcc)  # not the one-pass comparison


# --------------------------------------------------------------------------------------- calibrators
def test_methods_choose_different_ranges(data):
    calib, _ = data
    reader = ArrayCalibrationReader(calib[::4], batch_size=25)
    r = {m: compute_activation_ranges(exported_onnx(), reader, m) for m in ("minmax", "percentile", "entropy")}
    names = sorted(r["minmax"].ranges)
    amax = {m: np.array([r[m].amax(n) for n in names]) for m in r}
    assert (amax["percentile"] <= amax["minmax"] + 1e-7).all() and (amax["entropy"] <= amax["minmax"] + 1e-7).all()
    # Clipping methods really clip somewhere (ORT's own entropy with 128 bins would equal min-max everywhere).
    assert (amax["entropy"] < 0.95 * amax["minmax"]).mean() > 0.3
    assert (amax["percentile"] < amax["minmax"]).mean() > 0.3


def test_entropy_threshold_on_a_known_distribution():
    rng = np.random.default_rng(0)
    x = np.abs(np.concatenate([rng.normal(size=200_000), [40.0, -35.0]]))  # N(0,1) plus two far outliers
    hist = np.histogram(x, bins=2048, range=(0, x.max()))[0]
    amax = entropy_amax(hist, float(x.max()))
    assert 2.5 < amax < 6.0  # clips the outliers, keeps the bulk (TensorRT lands near 4 sigma)


def test_calibration_refuses_bad_data():
    with pytest.raises(CalibrationError, match="float32"):
        ArrayCalibrationReader(np.zeros((32, 112, 112, 3), np.uint8))
    with pytest.raises(CalibrationError, match="NaN"):
        ArrayCalibrationReader(np.full((32, 3, 112, 112), np.nan, np.float32))
    with pytest.raises(CalibrationError, match="only 4 calibration samples"):
        compute_activation_ranges(exported_onnx(), ArrayCalibrationReader(np.zeros((4, 3, 112, 112), np.float32)))
    assert trt_version_number("8.6.2") == 8602 and trt_version_number("10.3.0") == 100300
    with pytest.raises(ValueError, match="TensorRT 5-10"):
        trt_version_number("11.0")


# ------------------------------------------------------------------------------------ TensorRT check
def _tiny_model(nodes, inits, opset=17, out_shape=(1, 4)):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_trt_check_passes_the_student_fp32_and_int8(qdq):
    fp32 = check_tensorrt_compat(exported_onnx())
    assert fp32.ok and not fp32.is_quantized and not fp32.issues
    int8 = check_tensorrt_compat(qdq.qdq_path)
    assert int8.ok and int8.is_quantized and not int8.issues, int8.summary()
    int8.raise_if_failed()


def test_trt_check_flags_unsupported_ops():
    model = _tiny_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Hardmax", ["r"], ["y"])], [])
    report = check_tensorrt_compat(model)
    assert not report.ok and report.unsupported_ops == ["Hardmax"]
    with pytest.raises(RuntimeError, match="Hardmax is not supported"):
        report.raise_if_failed()
    custom = _tiny_model([helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft")], [])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert any(i.rule == "unsupported-op" and "plugin" in i.message for i in check_tensorrt_compat(custom).errors)
    assert any(i.rule == "opset" for i in check_tensorrt_compat(_tiny_model([helper.make_node(
        "Relu", ["x"], ["y"])], [], opset=19)).errors)


def test_trt_check_flags_qdq_rule_breaks():
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp_u8"], ["xq"]),        # uint8, zero point 3
        helper.make_node("DequantizeLinear", ["xq", "s", "zp_u8"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], axis=1),  # per-channel, wrong axis
        helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"]),               # int32 bias
        helper.make_node("Gemm", ["xd", "wd", "bd"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.uint8), "zp_u8"), w,
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wzp"),
             numpy_helper.from_array(np.zeros(4, np.int32), "b"),
             numpy_helper.from_array(np.array(0.001, np.float32), "bs")]
    rules = {i.rule for i in check_tensorrt_compat(_tiny_model(nodes, inits)).errors}
    assert {"qdq-int8", "qdq-zero-point", "weight-per-channel-axis", "dq-int8-input"} <= rules, rules


# ------------------------------------------------------------------------------------------- TFLite
def test_tflite_int8_is_int8_throughout(tflite):
    _, q = tflite
    info = inspect_tflite(open(q.path, "rb").read())
    convs = [o for o in info.ops if o["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(convs) >= 10
    for o in convs:  # activation in, weights, int32 bias; int8 out
        assert o["in"][:2] == ["int8", "int8"] and o["out"] == ["int8"], o
        assert len(o["in"]) < 3 or o["in"][2] == "int32", o
    assert not q.float_compute_ops and "QUANTIZE" not in q.op_counts and "DEQUANTIZE" not in q.op_counts
    # Documented I/O: int8 tensors (the backend quantises/dequantises), NCHW input.
    assert q.inputs[0]["dtype"] == "int8" and q.inputs[0]["shape"] == [1, 3, 112, 112]
    assert q.outputs[0]["dtype"] == "int8" and q.outputs[0]["shape"] == [1, 2]


def test_tflite_int8_smaller_and_tracks_fp32(tflite, data):
    f, q = tflite
    # int8 weights save ~3 of every 4 weight bytes; per-channel scales, int32 biases and the flatbuffer itself
    # claw some back, which matters on this 28k-parameter student (the 1M one shrinks ~3.7x).
    params = sum(p.numel() for p in fitted_student().parameters())
    assert f.size_bytes - q.size_bytes > 2 * params, (f.size_bytes, q.size_bytes, params)
    assert f.fidelity.max_abs_err < 1e-4  # float TFLite == torch
    _, check = data
    backend = load_backend(open(q.path, "rb").read(), "tflite")
    got = next(iter(backend.run1(check).values()))  # float NCHW in, float scores out
    ref = run_onnx(exported_onnx(), check)
    assert got.shape == (len(check), 2) and got.dtype == np.float32
    for j in range(2):
        assert spearmanr(ref[:, j], got[:, j])[0] > 0.9, j
    assert np.abs(got - ref).max() < 0.25 * np.ptp(ref, axis=0).min()


def test_score_output_range_spans_every_score_with_a_margin():
    from fiqa_compile.export.tflite import score_output_range

    scores = [{"mean": 0.5, "std": 0.01, "teacher_p01": 0.47, "teacher_p99": 0.51},     # z -3 .. +1
              {"mean": 90.0, "std": 40.0, "teacher_p01": 10.0, "teacher_p99": 170.0}]  # z -2 .. +2
    assert score_output_range(scores) == pytest.approx((-4.0, 3.0))
    assert score_output_range(scores, margin_std=0.0) == pytest.approx((-3.0, 2.0))
    with pytest.raises(ValueError, match="no scores"):
        score_output_range([])


def test_pinned_output_range_keeps_scores_the_calibration_never_reached():
    """Calibrated only on the lower-scoring faces, the int8 output clips the rest; pinned, it holds them."""
    import torch

    from fiqa_compile.export.tflite import quantize_pt2e
    from fiqa_compile.models.students import export_ready

    model = fitted_student()
    x = faces_to_tensor(face_pool().faces)
    with torch.no_grad():
        ref = export_ready(model)(torch.from_numpy(x)).numpy()
    top = ref.max(1)
    low, high = x[top < np.quantile(top, 0.4)], x[top > np.quantile(top, 0.8)]
    with torch.no_grad():
        ref_high = export_ready(model)(torch.from_numpy(high)).numpy()
    span = (float(ref.min()) - 0.5, float(ref.max()) + 0.5)
    errors = {}
    for name, pinned in (("calibration only", None), ("pinned", span)):
        q, _ = quantize_pt2e(model, low, output_range=pinned)
        with torch.no_grad():
            got = q(torch.from_numpy(high)).numpy()
        errors[name] = float(np.abs(got - ref_high).max())
    # clipped at what the low faces reached vs an int8 step or two of the wider range plus int8 noise
    assert errors["calibration only"] > 2 * errors["pinned"], errors
    assert errors["pinned"] < 0.25 * np.ptp(ref), errors


def test_pinning_never_narrows_what_the_calibration_saw():
    import torch

    from fiqa_compile.export.tflite import pin_output_range, quantize_pt2e

    x = faces_to_tensor(face_pool().faces[:48])
    q_wide, _ = quantize_pt2e(fitted_student(), x)
    q_tiny, _ = quantize_pt2e(fitted_student(), x, output_range=(-1e-3, 1e-3))  # inside the seen range
    with torch.no_grad():
        assert np.allclose(q_wide(torch.from_numpy(x)).numpy(), q_tiny(torch.from_numpy(x)).numpy(), atol=0.05)
    with pytest.raises(ValueError, match="lo < hi"):
        pin_output_range(torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph()), (1.0, 0.0))
