"""fp32 ONNX -> INT8 Q/DQ ONNX for TensorRT explicit quantisation (plus an implicit-INT8 calibration cache).

Steps, each a separate function so the compile can log and test them on their own:

1. :func:`preprocess` -- ORT's ``quant_pre_process`` (shape inference + basic graph optimisation). Tensor names
   are kept, so ranges measured here also name the tensors of the deployed fp32 ONNX.
2. ranges -- :func:`fiqa_compile.export.calibrators.compute_activation_ranges` (MinMax / Percentile / Entropy).
3. :func:`quantize_qdq` -- ``onnxruntime.quantization.quantize_static`` in ``QuantFormat.QDQ`` with the ranges
   from step 2 (handed over through ORT's JSON range cache, so ORT does not calibrate a second time):
   INT8 weights per-channel symmetric, INT8 activations symmetric (every zero point 0, as TensorRT requires),
   biases left float (TensorRT has no INT32 DequantizeLinear), optionally the final head kept float.
4. :func:`scan_qdq` -- reads every Q/DQ node back and fails on any non-zero zero point or per-tensor weight.

:func:`build_qdq` runs all of it (optionally for every calibration method, keeping the most faithful) and also
writes the TensorRT (<= 10) implicit-INT8 calibration cache from the same ranges.
"""
from __future__ import annotations

import inspect
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

from fiqa_compile.export.calibrators import (
    ActivationRanges,
    ArrayCalibrationReader,
    CalibMethod,
    CalibrationError,
    compute_activation_ranges,
    write_trt_calibration_cache,
)
from fiqa_compile.export.fidelity import Fidelity, compare_scores
from fiqa_compile.export.onnx_export import INPUT_NAME, run_onnx
from fiqa_sdk.preprocess import mirror_mean, with_mirror

log = logging.getLogger(__name__)

_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_ORT_OUTPUT_SUFFIX = "_QuantizeLinear_Input"


class QuantizationError(RuntimeError):
    """The Q/DQ model violates the symmetric per-channel INT8 contract."""


def preprocess(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ORT's recommended pre-quantisation pass: symbolic + ONNX shape inference and basic optimisation."""
    quant_pre_process(str(fp32_path), str(out_path), skip_optimization=False, skip_onnx_shape=False,
                      skip_symbolic_shape=False)
    return Path(out_path)


def head_node_names(model: onnx.ModelProto | str | Path, num_linear: int = 2) -> list[str]:
    """Names of the nodes from the last ``num_linear`` Gemm/MatMul layers to the graph output.

    Found by walking back from the output along first inputs, so it needs no exporter-specific node names
    (the dynamo exporter's names change between torch versions).
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    producer = {o: n for n in model.graph.node for o in n.output}
    names, seen_linear = [], 0
    cur = model.graph.output[0].name
    while cur in producer and seen_linear < num_linear:
        node = producer[cur]
        names.append(node.name)
        if node.op_type in ("Gemm", "MatMul"):
            seen_linear += 1
        cur = node.input[0]
    if seen_linear < num_linear:
        raise ValueError(f"found only {seen_linear} Gemm/MatMul layers before the output; cannot exclude "
                         f"{num_linear}")
    return names[::-1]


@dataclass
class QDQScan:
    """What the Q/DQ nodes of a model really contain."""

    num_quantize: int
    num_dequantize: int
    nonzero_zero_points: list[str]
    non_int8: list[str]
    per_channel_weights: list[str]
    per_tensor_weights: list[str]
    float_weight_layers: list[str]
    activation_scales: dict[str, float] = field(default_factory=dict)  # quantised fp32 tensor name -> scale


def scan_qdq(model: onnx.ModelProto | str | Path) -> QDQScan:
    """Read back every QuantizeLinear/DequantizeLinear zero point and scale, and how each weight is quantised."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    nonzero, non_int8, act_scales = [], [], {}
    n_q = n_dq = 0
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_q += n.op_type == "QuantizeLinear"
        n_dq += n.op_type == "DequantizeLinear"
        zp_name = n.input[2] if len(n.input) > 2 else ""
        if not zp_name or zp_name not in inits:
            non_int8.append(f"{n.name}: no constant zero point (defaults to uint8)")
            continue
        zp = inits[zp_name]
        if zp.data_type != onnx.TensorProto.INT8:
            non_int8.append(f"{n.name}: zero point {onnx.TensorProto.DataType.Name(zp.data_type)}")
        if np.any(numpy_helper.to_array(zp) != 0):
            nonzero.append(n.name)
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            # ORT renames a quantised graph output X to "X_QuantizeLinear_Input" (the final DQ then emits X).
            base = n.input[0].removesuffix(_ORT_OUTPUT_SUFFIX)
            name = base if base in outputs else n.input[0]
            act_scales[name] = float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
    per_ch, per_t, float_w = [], [], []
    for n in model.graph.node:
        if n.op_type not in _WEIGHT_OPS or len(n.input) < 2:
            continue
        src = producer.get(n.input[1])
        if src is not None and src.op_type == "DequantizeLinear" and src.input[0] in inits:
            scale = numpy_helper.to_array(inits[src.input[1]])
            (per_ch if scale.size > 1 else per_t).append(n.name)
        elif n.input[1] in inits:
            float_w.append(n.name)
    return QDQScan(num_quantize=n_q, num_dequantize=n_dq, nonzero_zero_points=nonzero, non_int8=non_int8,
                   per_channel_weights=per_ch, per_tensor_weights=per_t, float_weight_layers=float_w,
                   activation_scales=act_scales)


def _strip_unused_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's optimiser declares ~8 opset domains (com.microsoft, ...) whether used or not; keep only used ones."""
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def quantize_qdq(preprocessed_path: str | Path, out_path: str | Path, ranges: ActivationRanges, *,
                 nodes_to_exclude: list[str] | None = None, per_channel: bool = True) -> QDQScan:
    """Rewrite the preprocessed fp32 model into symmetric INT8 Q/DQ using ``ranges``; verify and save."""
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise RuntimeError("this onnxruntime's quantize_static cannot take precomputed ranges "
                           "(calibration_cache_path); upgrade onnxruntime")
    graph_nodes = {n.name for n in onnx.load(str(preprocessed_path), load_external_data=False).graph.node}
    unknown = [n for n in (nodes_to_exclude or []) if n not in graph_nodes]
    if unknown:
        raise ValueError(f"nodes_to_exclude names nodes that are not in the model: {unknown}")
    with tempfile.TemporaryDirectory(prefix="fiqa-qdq-") as tmp:
        cache = ranges.save_ort_cache(Path(tmp) / "ranges.json")
        raw = Path(tmp) / "qdq.onnx"
        quantize_static(
            str(preprocessed_path), str(raw), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            per_channel=per_channel, reduce_range=False, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=list(nodes_to_exclude or []),
            calibrate_method=ranges.method.ort, calibration_cache_path=str(cache),
            extra_options={
                "ActivationSymmetric": True,   # zero point 0 for activations (TensorRT explicit quantisation)
                "WeightSymmetric": True,       # and for weights
                "QuantizeBias": False,         # TensorRT cannot DequantizeLinear INT32; it fuses float bias
                "QDQKeepRemovableActivations": True,  # keep Relu nodes explicit; TensorRT fuses them itself
            })
        model = _strip_unused_opsets(onnx.load(str(raw)))
    scan = scan_qdq(model)
    if scan.nonzero_zero_points or scan.non_int8:
        raise QuantizationError(f"Q/DQ model is not symmetric INT8: non-zero zero points at "
                                f"{scan.nonzero_zero_points[:5]}, non-int8 at {scan.non_int8[:5]}")
    if per_channel and scan.per_tensor_weights:
        raise QuantizationError(f"weights of {scan.per_tensor_weights[:5]} were quantised per-tensor although "
                                "per_channel=True")
    if not scan.per_channel_weights:
        raise QuantizationError("no weight was quantised; check op_types and nodes_to_exclude")
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return scan


@dataclass
class QDQResult:
    qdq_path: str
    trt_cache_path: str | None
    ranges: ActivationRanges
    scan: QDQScan
    excluded_nodes: list[str]
    fidelity: Fidelity | None
    size_bytes: int
    candidates: dict[str, dict] = field(default_factory=dict)  # method -> fidelity, when method="auto"

    def to_dict(self) -> dict:
        return {"qdq_path": self.qdq_path, "trt_cache_path": self.trt_cache_path,
                "method": self.ranges.method.value, "calibration_samples": self.ranges.num_samples,
                "num_quantize": self.scan.num_quantize, "num_dequantize": self.scan.num_dequantize,
                "per_channel_weights": len(self.scan.per_channel_weights),
                "float_weight_layers": self.scan.float_weight_layers, "excluded_nodes": self.excluded_nodes,
                "fidelity": self.fidelity.to_dict() if self.fidelity else None, "size_bytes": self.size_bytes,
                "candidates": self.candidates}


def _rank_key(fid: Fidelity) -> tuple[float, float]:
    """Best = highest worst-output Spearman, then lowest mean error; undefined rank agreement ranks last."""
    srcc = fid.min_srcc
    return (-np.inf if np.isnan(srcc) else srcc, -fid.mean_abs_err)


def build_qdq(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
              method: CalibMethod | str = "auto", percentile: float = 99.999,
              keep_head_float: bool = False, head_layers: int = 2, trt_cache_path: str | Path | None = None,
              trt_version: str = "10.3.0", check_inputs: np.ndarray | None = None,
              min_srcc: float | None = None, batch_size: int = 32, mirror_average: bool = False) -> QDQResult:
    """The whole Q/DQ stage: preprocess, calibrate on ``calibration`` ([N,3,112,112] float32 from a calibration
    set), quantise, verify, and optionally write the TensorRT calibration cache.

    ``method``: ``minmax`` / ``percentile`` / ``entropy``, or ``auto`` (the default): quantise with each and keep
    the one whose INT8 scores rank ``check_inputs`` most like fp32 does. No method wins everywhere: on a briefly
    trained test student, entropy clipped early ReLU layers to 12-30 % of their maximum and its Spearman vs fp32
    fell to 0.40 where min-max and percentile kept 0.96-0.99; on well-trained networks entropy often wins.
    ``check_inputs`` (held-out faces, not the calibration ones) are scored by the fp32 and the INT8 model in ORT;
    with ``min_srcc`` a rank agreement below it raises :class:`~fiqa_compile.export.fidelity.FidelityError`.
    ``mirror_average``: compare the scores a mirror_average bundle computes (the mean over each face and its mirror).
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    methods = list(CalibMethod) if str(method) == "auto" else [CalibMethod(method)]
    if len(methods) > 1 and check_inputs is None:
        raise ValueError("method='auto' chooses by rank agreement on check_inputs: pass held-out faces, or name a "
                         "method (minmax, percentile, entropy)")
    fp32 = onnx.load(str(fp32_path))
    fp32_tensors = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
    def scores(path: Path) -> np.ndarray:
        if not mirror_average:
            return run_onnx(path, check_inputs)
        return mirror_mean(run_onnx(path, with_mirror(check_inputs)))

    ref = scores(fp32_path) if check_inputs is not None else None
    best = None
    candidates: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fiqa-qdq-") as tmp:
        pre = preprocess(fp32_path, Path(tmp) / "pre.onnx")
        reader = ArrayCalibrationReader(calibration, input_name=INPUT_NAME, batch_size=batch_size)
        exclude = head_node_names(onnx.load(str(pre)), head_layers) if keep_head_float else []
        for m in methods:
            ranges = compute_activation_ranges(pre, reader, m, percentile=percentile)
            path = Path(tmp) / f"qdq-{m.value}.onnx"
            scan = quantize_qdq(pre, path, ranges, nodes_to_exclude=exclude)
            fid = compare_scores(ref, scores(path)) if ref is not None else None
            if fid is not None:
                candidates[m.value] = fid.to_dict()
                log.info("Q/DQ with %s calibration: %s", m.value, fid.to_dict())
            if best is None or (fid is not None and _rank_key(fid) > _rank_key(best[3])):
                best = (ranges, scan, path, fid)
        ranges, scan, path, fid = best
        out_path.parent.mkdir(parents=True, exist_ok=True)
        path.replace(out_path)

    cache = None
    if trt_cache_path is not None:
        names = sorted(t for t in ranges.ranges if t in fp32_tensors)
        lost = sorted(set(scan.activation_scales) - set(names))
        if lost:
            raise CalibrationError(f"quantised tensors {lost[:5]} do not exist in {fp32_path.name}; the "
                                   "pre-processing renamed tensors, so the cache would not match the fp32 ONNX")
        cache = str(write_trt_calibration_cache(ranges, trt_cache_path, trt_version=trt_version,
                                                tensor_names=names, scales=scan.activation_scales))
    if fid is not None:
        fid.require(min_srcc, f"Q/DQ INT8 model {out_path.name} ({ranges.method.value} calibration)")
    log.info("Q/DQ %s: %s calibration, %d Q, %d DQ, %d per-channel weights, excluded %s", out_path.name,
             ranges.method.value, scan.num_quantize, scan.num_dequantize, len(scan.per_channel_weights), exclude)
    return QDQResult(qdq_path=str(out_path), trt_cache_path=cache, ranges=ranges, scan=scan, excluded_nodes=exclude,
                     fidelity=fid, size_bytes=out_path.stat().st_size, candidates=candidates)
