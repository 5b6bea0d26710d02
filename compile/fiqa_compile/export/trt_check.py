"""Offline check that an ONNX model will parse in TensorRT and follows its explicit-quantisation (Q/DQ) rules.

No TensorRT is needed (the compile host usually has none); the rules are transcribed from documentation:

* Operators: the support matrix of onnx-tensorrt ``docs/operators.md`` for **TensorRT 8.5** ("TensorRT 8.5
  supports operators up to Opset 17"; github.com/onnx/onnx-tensorrt, commit 6d0ab7be). 8.5 is the oldest
  TensorRT of a current JetPack (5.1); TensorRT 8.6 and 10.x accept a superset, so a model passing here parses
  on every JetPack from 5.1 on. Only rows marked ``Y`` are allowed; the per-op restrictions that can be checked
  statically (constant ``axes``/``K`` inputs, 2D/3D conv and pooling) are checked too.
* Q/DQ: QuantizeLinear/DequantizeLinear carry INT8 only, with constant, positive, finite scales and zero points
  that are all 0 (the table's "``x_zero_point``/``y_zero_point`` must be 0"; a missing zero point means uint8 in
  ONNX, which TensorRT refuses); activations are per-tensor; weights are per-channel along the output-channel
  axis (Conv 0, ConvTranspose 1, Gemm 0 with transB else 1, MatMul last); no INT32 (bias) DequantizeLinear.

:func:`check_tensorrt_compat` returns a report; ``report.raise_if_failed()`` lets a compile stop on it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

REFERENCE = ("onnx/onnx-tensorrt docs/operators.md, TensorRT 8.5 (opset <= 17), commit "
             "6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc")
MAX_OPSET = 17
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear need opset 13

# Rows marked "Y" in the TensorRT 8.5 support matrix.
SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# "<input> must be an initializer/constant" restrictions: op -> input index.
_CONST_INPUTS = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "TopK": 1, "CumSum": 1}
_SPATIAL_2D_3D = {"Conv", "ConvTranspose", "AveragePool", "MaxPool", "LpPool"}
# Weight input (index 1) of these ops is quantised per output channel along this axis.
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass
class Issue:
    rule: str
    node: str
    message: str
    severity: str = "error"  # "error" fails the check, "warning" does not

    def __str__(self) -> str:
        return f"[{self.severity}] {self.rule} @ {self.node}: {self.message}"


@dataclass
class TrtCheckReport:
    reference: str
    opset: int
    op_counts: dict[str, int]
    unsupported_ops: list[str]
    issues: list[Issue] = field(default_factory=list)
    num_quantize: int = 0
    num_dequantize: int = 0

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def is_quantized(self) -> bool:
        return self.num_quantize + self.num_dequantize > 0

    def summary(self, limit: int = 10) -> str:
        head = (f"TensorRT check ({self.reference}): opset {self.opset}, {sum(self.op_counts.values())} nodes, "
                f"{len(self.errors)} errors, {len(self.warnings)} warnings")
        return "\n".join([head] + [f"  {i}" for i in self.issues[:limit]]
                         + ([f"  ... and {len(self.issues) - limit} more"] if len(self.issues) > limit else []))

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise TensorRTIncompatible(self.summary())

    def to_dict(self) -> dict:
        return {"reference": self.reference, "opset": self.opset, "op_counts": self.op_counts,
                "unsupported_ops": self.unsupported_ops, "ok": self.ok, "num_quantize": self.num_quantize,
                "num_dequantize": self.num_dequantize, "issues": [vars(i) for i in self.issues]}


class TensorRTIncompatible(RuntimeError):
    """The model would not parse in TensorRT, or breaks its explicit-quantisation rules."""


def list_ops(model: onnx.ModelProto) -> Counter:
    """Op types of the main graph, with their domain when it is not the default one."""
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                   for n in model.graph.node)


class _Graph:
    """Lookups the rules need: constants by name, producers, consumers, inferred types/shapes."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.const_types: dict[str, int] = {i.name: i.data_type for i in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                        self.const_types[n.output[0]] = a.t.data_type
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
            vis = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        except Exception:  # noqa: BLE001 - inference is a best-effort aid for the rank rules
            vis = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
        self.elem_type = {v.name: v.type.tensor_type.elem_type for v in vis}
        self.rank = {v.name: len(v.type.tensor_type.shape.dim) for v in vis if v.type.tensor_type.HasField("shape")}

    def dtype(self, name: str) -> int | None:
        return self.const_types.get(name, self.elem_type.get(name))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _label(n: onnx.NodeProto) -> str:
    return f"{n.op_type}:{n.name or n.output[0]}"


def _expected_weight_axis(consumer: onnx.NodeProto, weight_rank: int) -> int:
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    return weight_rank - 1  # MatMul: B is [..., K, N]


def _check_qdq_node(g: _Graph, n: onnx.NodeProto, issues: list[Issue]) -> None:
    where = _label(n)
    scale_name = n.input[1] if len(n.input) > 1 else ""
    if scale_name not in g.consts:
        issues.append(Issue("qdq-constant-scale", where, "scale must be a constant initializer"))
        return
    scale = g.consts[scale_name].astype(np.float64)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        issues.append(Issue("qdq-positive-scale", where, f"scales must be finite and > 0, got min {scale.min():g}"))
    zp_name = n.input[2] if len(n.input) > 2 else ""
    if not zp_name:
        issues.append(Issue("qdq-int8", where, "no zero point: ONNX then means uint8, TensorRT needs int8 with "
                                                "zero point 0"))
    elif zp_name not in g.consts:
        issues.append(Issue("qdq-constant-zero-point", where, "zero point must be a constant initializer"))
    else:
        zp = g.consts[zp_name]
        if g.const_types.get(zp_name) != TensorProto.INT8:
            zp_type = TensorProto.DataType.Name(g.const_types[zp_name])
            issues.append(Issue("qdq-int8", where, f"zero point type is {zp_type}, TensorRT quantises to INT8 only"))
        if np.any(zp != 0):
            issues.append(Issue("qdq-zero-point", where, f"zero points must all be 0 (symmetric), found "
                                                         f"{sorted(set(np.asarray(zp).reshape(-1).tolist()))[:5]}"))
        if zp.shape != scale.shape:
            issues.append(Issue("qdq-shapes", where, f"scale shape {scale.shape} != zero point shape {zp.shape}"))
    per_channel = scale.size > 1
    if n.op_type == "DequantizeLinear":
        x = n.input[0]
        dt = g.dtype(x)
        if dt is not None and dt != TensorProto.INT8:
            issues.append(Issue("dq-int8-input", where, f"DequantizeLinear input is "
                                f"{TensorProto.DataType.Name(dt)}; TensorRT dequantises INT8 only (keep biases float:"
                                " quantize_static extra_options QuantizeBias=False)"))
        if x in g.consts:  # a weight
            w = g.consts[x]
            if per_channel:
                axis = _attr(n, "axis", 1)
                axis = axis + w.ndim if axis < 0 else axis
                if w.ndim == 0 or axis >= w.ndim or w.shape[axis] != scale.size:
                    issues.append(Issue("weight-per-channel-axis", where,
                                        f"{scale.size} scales do not match axis {axis} of weight {tuple(w.shape)}"))
                    return
                for c in g.consumers.get(n.output[0], []):
                    if c.op_type in _WEIGHT_OPS and len(c.input) > 1 and c.input[1] == n.output[0]:
                        want = _expected_weight_axis(c, w.ndim)
                        if axis != want:
                            issues.append(Issue("weight-per-channel-axis", where, f"weight of {_label(c)} is "
                                                f"quantised along axis {axis}; TensorRT needs the output-channel "
                                                f"axis {want}"))
        elif per_channel:
            issues.append(Issue("activation-per-tensor", where, "activations must be quantised per-tensor"))
    elif per_channel and n.input[0] not in g.consts:
        issues.append(Issue("activation-per-tensor", where, "activations must be quantised per-tensor"))


def check_tensorrt_compat(model: onnx.ModelProto | str | Path, *, require_per_channel_weights: bool = True,
                          max_opset: int = MAX_OPSET) -> TrtCheckReport:
    """Check ``model`` against the TensorRT 8.5 ONNX parser rules and explicit-quantisation rules (see module doc).

    For a Q/DQ model, a Conv/Gemm/MatMul whose weight is not dequantised from INT8 will run in float: a warning
    (it may be on purpose, e.g. a float head). Per-tensor weight quantisation is an error when
    ``require_per_channel_weights`` (TensorRT accepts it, but it is our pipeline's contract: per-tensor INT8 on
    depthwise convs loses too much).
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    g = _Graph(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)
    counts = list_ops(model)
    issues: list[Issue] = []
    if not MIN_OPSET <= opset <= max_opset:
        issues.append(Issue("opset", "model", f"default-domain opset {opset}; the reference parser takes "
                                              f"{MIN_OPSET}..{max_opset}"))
    unsupported = sorted(op for op in counts if op not in SUPPORTED_OPS)
    for n in model.graph.node:
        where = _label(n)
        if n.domain not in ("", "ai.onnx"):
            issues.append(Issue("unsupported-op", where, f"custom domain {n.domain!r} needs a TensorRT plugin"))
            continue
        if n.op_type not in SUPPORTED_OPS:
            issues.append(Issue("unsupported-op", where, f"{n.op_type} is not supported by the TensorRT ONNX parser"))
            continue
        if n.op_type in _CONST_INPUTS:
            idx = _CONST_INPUTS[n.op_type]
            if len(n.input) > idx and n.input[idx] and n.input[idx] not in g.consts:
                issues.append(Issue("constant-input", where, f"input {idx} ({n.input[idx]}) must be an initializer"))
        if n.op_type in _SPATIAL_2D_3D:
            r = g.rank.get(n.input[0])
            if r is not None and r not in (4, 5):
                issues.append(Issue("spatial-rank", where, f"only 2D/3D {n.op_type} is supported, input rank {r}"))
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq_node(g, n, issues)
    n_q, n_dq = counts.get("QuantizeLinear", 0), counts.get("DequantizeLinear", 0)
    if n_q + n_dq:
        for n in model.graph.node:
            if n.op_type not in _WEIGHT_OPS or len(n.input) < 2:
                continue
            src = g.producer.get(n.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                if require_per_channel_weights and src.input[1] in g.consts and g.consts[src.input[1]].size == 1 \
                        and n.input[1] and src.input[0] in g.consts:
                    issues.append(Issue("weight-per-channel", _label(n), "weights are quantised per-tensor; "
                                                                         "quantise per-channel (per_channel=True)"))
            elif n.input[1] in g.consts:
                issues.append(Issue("float-layer", _label(n), "weights are float in a Q/DQ model: this layer runs "
                                                              "in FP32/FP16", severity="warning"))
    return TrtCheckReport(reference=REFERENCE, opset=opset, op_counts=dict(counts), unsupported_ops=unsupported,
                          issues=issues, num_quantize=n_q, num_dequantize=n_dq)
