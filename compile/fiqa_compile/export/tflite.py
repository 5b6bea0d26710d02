"""Torch student -> float TFLite and full-INT8 TFLite (litert-torch 0.10, PT2E static quantisation).

INT8 recipe (read from litert-torch 0.10's own source and tests, ``litert_torch/quantize``):

1. ``torch.export.export(net, (x,), dynamic_shapes=batch, strict=True).module()``. *Strict* (TorchDynamo)
   export on purpose: litert-torch's ``add`` annotator finds adds through ``source_fn_stack`` metadata, which
   only strict export records. With torch 2.13's default non-strict export the residual adds are silently left
   unannotated and run in float between DEQUANTIZE/QUANTIZE ops.
2. ``PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))``:
   int8 per-channel symmetric weights, int8 per-tensor activations (histogram observers), int32 biases.
3. ``torchao.quantization.pt2e.quantize_pt2e.prepare_pt2e`` -> calibration batches -> ``convert_pt2e(...,
   fold_quantize=False)`` -> ``move_exported_model_to_eval``.
4. ``litert_torch.convert(converted, (x1,), quant_config=QuantConfig(pt2e_quantizer=quantizer))`` -- the
   quant_config switches the converter's Q/DQ lowering to STATIC, which yields real int8 kernels.

What comes out: int8 input and int8 output tensors (no QUANTIZE/DEQUANTIZE ops at all), NCHW input with an int8
TRANSPOSE inside; every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / ADD is int8 with int32 bias.
The int8 *output* range is not left to the calibration faces alone (``output_range``): its histogram observer
is affine and fits what the faces reach, so a calibration set without the very best faces clips the top of the
score range -- the pip-shipped group photo clipped the perceptual score at +0.90 z, below the +1.2 z the device's
0-100 scale still resolves, and full-INT8 perceptual SRCC with fp32 on unseen LFW people was 0.986 (0.998 with the
range pinned; ``bench/eval_student.py``). The compile pins it to the span the student was distilled on
(:func:`score_output_range`).

``fiqa_runtimes.litert_backend.LiteRTBackend`` quantises the float input and dequantises the output with the
tensors' own scale and zero point, so callers keep feeding ``faces_to_tensor`` output. Models are converted at
batch 1; the batch axis is resized at run time (verified below at batch N).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fiqa_compile.export.fidelity import Fidelity, compare_scores
from fiqa_compile.export.onnx_export import ExportVerificationError, verification_inputs
from fiqa_compile.models.students import export_ready

log = logging.getLogger(__name__)

# Ops that do arithmetic on activations: in a full-INT8 model none may see or produce float32.
COMPUTE_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "SUB", "MEAN",
                         "AVERAGE_POOL_2D", "MAX_POOL_2D", "PAD", "RELU", "RELU6", "HARD_SWISH", "LOGISTIC",
                         "CONCATENATION", "RESHAPE", "TRANSPOSE", "BATCH_MATMUL"})


class FullInt8Error(RuntimeError):
    """The 'INT8' TFLite still computes some layers in float."""


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    scale: float
    zero_point: int


@dataclass
class TFLiteInfo:
    ops: list[dict]                # op_name, input dtypes, output dtypes (delegates disabled, so real ops)
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(Counter(o["op"] for o in self.ops))

    def float_compute_ops(self) -> list[str]:
        return [f"{o['index']}:{o['op']}" for o in self.ops
                if o["op"] in COMPUTE_OPS and "float32" in (o["in"] + o["out"])]

    def weight_dtypes(self) -> Counter:
        """dtype of the filter/weight input of every conv and fully-connected op."""
        return Counter(o["in"][1] for o in self.ops
                       if o["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(o["in"]) > 1)


def inspect_tflite(model: bytes) -> TFLiteInfo:
    """Read op and tensor types with the LiteRT interpreter (default delegates off, so XNNPACK hides nothing)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=model,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    td = {d["index"]: d for d in it.get_tensor_details()}
    ops = []
    for o in it._get_ops_details():  # the interpreter's only op listing; stable across LiteRT 1.x/2.x
        ops.append({"index": o["index"], "op": o["op_name"],
                    "in": [np.dtype(td[i]["dtype"]).name for i in o["inputs"] if i >= 0],
                    "out": [np.dtype(td[i]["dtype"]).name for i in o["outputs"] if i >= 0]})

    def info(d: dict) -> TensorInfo:
        scale, zp = d["quantization"]
        return TensorInfo(d["name"], [int(v) for v in d["shape"]], np.dtype(d["dtype"]).name, float(scale), int(zp))

    return TFLiteInfo(ops=ops, inputs=[info(d) for d in it.get_input_details()],
                      outputs=[info(d) for d in it.get_output_details()])


def run_tflite(model: bytes, x: np.ndarray, threads: int | None = 1) -> np.ndarray:
    """Score a float NCHW batch through ``fiqa_runtimes``' LiteRT backend (as the device does)."""
    from fiqa_runtimes import load_backend

    backend = load_backend(model, "tflite", backend="litert", threads=threads)
    return next(iter(backend.run1(np.ascontiguousarray(x, dtype=np.float32)).values()))


@dataclass
class TFLiteReport:
    path: str
    kind: str                      # "float" or "int8"
    size_bytes: int
    op_counts: dict[str, int]
    inputs: list[dict]
    outputs: list[dict]
    float_compute_ops: list[str]
    fidelity: Fidelity
    api: str
    batch_sizes_checked: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["fidelity"] = self.fidelity.to_dict()
        return d


@contextlib.contextmanager
def _quiet():
    """litert-torch prints progress bars and TF logs to stdout/stderr; keep them out of the compile log."""
    old = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.debug("litert-torch output:\n%s", buf.getvalue())
        if old is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = old


def _check_inputs(check_inputs: np.ndarray | None) -> np.ndarray:
    x = verification_inputs() if check_inputs is None else np.ascontiguousarray(check_inputs, dtype=np.float32)
    if x.ndim != 4 or len(x) < 2:
        raise ValueError(f"check_inputs must be a batch [N>=2, 3, 112, 112], got {x.shape}")
    return x


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _report(path: Path, kind: str, data: bytes, info: TFLiteInfo, fid: Fidelity, api: str,
            checked: list[int]) -> TFLiteReport:
    return TFLiteReport(path=str(path), kind=kind, size_bytes=len(data), op_counts=info.op_counts,
                        inputs=[vars(t) for t in info.inputs], outputs=[vars(t) for t in info.outputs],
                        float_compute_ops=info.float_compute_ops(), fidelity=fid, api=api,
                        batch_sizes_checked=checked)


def convert_float(model: torch.nn.Module, path: str | Path, *, check_inputs: np.ndarray | None = None,
                  atol: float = 1e-4) -> TFLiteReport:
    """Float32 TFLite via ``litert_torch.convert(net, (x1,))``; verified against torch (max abs error <= atol)."""
    import litert_torch

    net = export_ready(model)
    x = _check_inputs(check_inputs)
    with _quiet():
        data = litert_torch.convert(net, (torch.from_numpy(x[:1].copy()),)).model_content()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = run_tflite(data, x)
    fid = compare_scores(ref, got)
    if not fid.max_abs_err <= atol:
        raise ExportVerificationError(f"float TFLite differs from torch by {fid.max_abs_err:.3g} > atol={atol:g}")
    path = Path(path)
    _write(path, data)
    return _report(path, "float", data, inspect_tflite(data), fid, "litert_torch.convert(module, (x,))",
                   [len(x)])


def score_output_range(scores: list[dict], margin_std: float = 1.0) -> tuple[float, float]:
    """The z-score span a student's int8 output must hold: every score's teacher p01..p99 (the span the device's
    0-100 scale resolves, ``student.json`` ``scores``), widened by ``margin_std`` standard deviations each side."""
    if not scores:
        raise ValueError("no scores to take an output range from (student.json 'scores' is empty)")
    lo = min((s["teacher_p01"] - s["mean"]) / s["std"] for s in scores) - margin_std
    hi = max((s["teacher_p99"] - s["mean"]) / s["std"] for s in scores) + margin_std
    return float(lo), float(hi)


def pin_output_range(prepared: torch.fx.GraphModule, output_range: tuple[float, float]) -> None:
    """Replace the observer on the graph's output with a min-max one holding ``output_range`` and what the
    calibration reached (the union: pinning never narrows)."""
    from torchao.quantization.pt2e import MinMaxObserver

    lo, hi = output_range
    if not lo < hi:
        raise ValueError(f"output range ({lo}, {hi}) must have lo < hi")
    out = next(n for n in prepared.graph.nodes if n.op == "output")
    node = out.args[0][0] if isinstance(out.args[0], (list, tuple)) else out.args[0]
    old = getattr(prepared, str(node.target), None) if node.op == "call_module" else None
    if old is None or not hasattr(old, "min_val"):
        raise ValueError("the prepared graph's output has no activation observer to pin (quantizer config changed?)")
    pinned = MinMaxObserver(dtype=old.dtype, qscheme=old.qscheme, quant_min=old.quant_min, quant_max=old.quant_max,
                            eps=float(old.eps))
    pinned(torch.tensor([min(lo, float(old.min_val)), max(hi, float(old.max_val))]))
    setattr(prepared, str(node.target), pinned)


def quantize_pt2e(model: torch.nn.Module, calibration: np.ndarray, batch_size: int = 32,
                  output_range: tuple[float, float] | None = None):
    """Steps 1-3 of the module recipe: a PT2E-quantised GraphModule and its quantizer, calibrated on
    ``calibration`` ([N,3,112,112] float32 from a calibration set); ``output_range`` pins the output's range
    (:func:`pin_output_range`)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    calib = np.ascontiguousarray(calibration, dtype=np.float32)
    if calib.ndim != 4 or len(calib) < 16:
        raise ValueError(f"calibration must be [N>=16, 3, 112, 112] float32, got {calib.shape}")
    net = export_ready(model)
    example = torch.from_numpy(calib[:2].copy())
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        exported = torch.export.export(net, (example,), dynamic_shapes=({0: batch},), strict=True).module()
        quantizer = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for i in range(0, len(calib), batch_size):
                prepared(torch.from_numpy(calib[i:i + batch_size]))
        if output_range is not None:
            pin_output_range(prepared, output_range)
        converted = convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(converted)  # rewrites the graph's train-only ops...
        for m in converted.modules():           # ...but leaves the flag, which litert-torch warns about
            m.training = False
    return converted, quantizer


def convert_int8(model: torch.nn.Module, path: str | Path, calibration: np.ndarray, *,
                 check_inputs: np.ndarray | None = None, min_srcc: float | None = None,
                 batch_size: int = 32, output_range: tuple[float, float] | None = None) -> TFLiteReport:
    """Full-INT8 TFLite (see module docstring), checked to be INT8 throughout and compared with torch fp32.

    Raises :class:`FullInt8Error` if any compute op still runs in float, and
    :class:`~fiqa_compile.export.fidelity.FidelityError` if Spearman vs fp32 on ``check_inputs`` < ``min_srcc``.
    """
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    x = _check_inputs(check_inputs)
    converted, quantizer = quantize_pt2e(model, calibration, batch_size, output_range)
    with _quiet():
        data = litert_torch.convert(converted, (torch.from_numpy(x[:1].copy()),),
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer)).model_content()
    info = inspect_tflite(data)
    floats = info.float_compute_ops()
    weights = info.weight_dtypes()
    if floats or set(weights) != {"int8"}:
        raise FullInt8Error(f"INT8 TFLite still has float compute ops {floats[:8]} / weight dtypes {dict(weights)}; "
                            "a layer type the litert-torch PT2E quantiser does not annotate (use Conv/Linear/ReLU/"
                            "add only), or a non-strict export")
    net = export_ready(model)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = run_tflite(data, x)
    one = run_tflite(data, x[:1])
    lsb = max((t.scale for t in info.outputs), default=0.0)
    if not np.abs(one - got[:1]).max() <= lsb + 1e-12:  # int8 kernels may round differently per batch size
        raise ExportVerificationError("INT8 TFLite gives different scores at batch 1 and batch N for the same face")
    fid = compare_scores(ref, got)
    fid.require(min_srcc, f"INT8 TFLite {Path(path).name}")
    path = Path(path)
    _write(path, data)
    return _report(path, "int8", data, info, fid,
                   "torch.export(strict=True) + PT2EQuantizer(per-channel symmetric) + prepare_pt2e/convert_pt2e + "
                   "litert_torch.convert(quant_config=QuantConfig(pt2e_quantizer))", [1, len(x)])
