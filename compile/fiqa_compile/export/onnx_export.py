"""Torch student -> fp32 ONNX with a dynamic batch axis, simplified and verified against torch.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``, torch 2.13's default) is used first; it emits
opset 18 and down-converts to the requested opset with the ONNX C API. Only when it raises do we fall back to
the TorchScript exporter (``dynamo=False``), and the report says so and why. The graph is then simplified with
onnxsim, checked with ``onnx.checker`` and run in ONNX Runtime on the same inputs as torch: a max-abs
difference above ``atol`` raises :class:`ExportVerificationError` instead of writing an unverified file.
Opset 17 is the default because TensorRT 8.5 (JetPack 5.1) parses up to opset 17.
"""
from __future__ import annotations

import io
import logging
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from fiqa_compile.models.students import INPUT_SHAPE, export_ready

log = logging.getLogger(__name__)

INPUT_NAME = "faces"
OUTPUT_NAME = "scores"
DEFAULT_OPSET = 17


class ExportVerificationError(RuntimeError):
    """The exported model is not valid ONNX or does not compute what the torch model computes."""


@dataclass
class OnnxExportReport:
    path: str
    exporter: str                  # "dynamo" or "torchscript"
    fallback_reason: str | None    # why dynamo was abandoned (None when it worked)
    opset: int
    simplified: bool
    max_abs_diff: float            # ORT vs torch on the verification batch
    atol: float
    batch_sizes_checked: list[int]
    op_counts: dict[str, int] = field(default_factory=dict)
    size_bytes: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def verification_inputs(n: int = 8, seed: int = 0, shape: tuple[int, ...] = INPUT_SHAPE) -> np.ndarray:
    """Seeded smooth random images in [-1, 1] (the range of ``fiqa_sdk.preprocess.faces_to_tensor``).

    Smoothed noise rather than white noise, so activations resemble those of natural images more closely.
    """
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    low = torch.rand(n, c, max(1, h // 8), max(1, w // 8), generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.randn(n, c, h, w, generator=g)
    return (x.clamp(0, 1) * 2 - 1).numpy().astype(np.float32)


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                                    external_data=False, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
    return program.model_proto


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model, check_n=0, certify=False)
    if not ok:
        raise ExportVerificationError("onnxsim could not validate the simplified model; export with simplify=False "
                                      "and report the model to the onnxsim maintainers")
    return simplified


def run_onnx(model: bytes | str | Path, x: np.ndarray, threads: int | None = 1) -> np.ndarray:
    """Run a single-input ONNX model through fiqa_runtimes' ONNX Runtime backend; returns the first output."""
    from fiqa_runtimes import load_backend

    src = model if isinstance(model, bytes) else str(model)
    backend = load_backend(src, "onnx", backend="onnxruntime", threads=threads)
    return next(iter(backend.run1(np.ascontiguousarray(x, dtype=np.float32)).values()))


def export_onnx(model: torch.nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET, simplify: bool = True,
                atol: float = 1e-4, check_inputs: np.ndarray | None = None,
                allow_torchscript_fallback: bool = True) -> OnnxExportReport:
    """Export ``model`` (BN folded, eval mode) to ``path`` and verify it; see the module docstring.

    ``check_inputs``: [N,3,112,112] float32 batches to compare torch and ORT on (default: 8 seeded images).
    Batch sizes 1 and N are both run, which also proves the batch axis really is dynamic.
    """
    if opset < 13:
        raise ValueError(f"opset {opset} < 13: per-channel QuantizeLinear needs opset >= 13 (use 17 for TensorRT 8.5+)")
    net = export_ready(model)
    x = verification_inputs() if check_inputs is None else np.ascontiguousarray(check_inputs, dtype=np.float32)
    if x.ndim != 4 or x.shape[0] < 2:
        raise ValueError(f"check_inputs must be a batch [N>=2, C, H, W], got {x.shape}")
    example = torch.from_numpy(x[:2].copy())

    exporter, reason = "dynamo", None
    try:
        proto = _export_dynamo(net, example, opset)
    except Exception as e:  # noqa: BLE001 - the dynamo exporter raises many types
        if not allow_torchscript_fallback:
            raise
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", reason)
        exporter = "torchscript"
        proto = _export_torchscript(net, example, opset)

    got_opset = _opset_of(proto)
    if got_opset != opset:
        raise ExportVerificationError(f"the {exporter} exporter produced opset {got_opset}, not the requested {opset} "
                                      "(the down-conversion failed); TensorRT 8.5 cannot parse opset > 17")
    if simplify:
        proto = _simplify(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportVerificationError(f"exported ONNX fails onnx.checker: {e}") from e

    names_in = [i.name for i in proto.graph.input]
    names_out = [o.name for o in proto.graph.output]
    if names_in != [INPUT_NAME] or names_out != [OUTPUT_NAME]:
        raise ExportVerificationError(f"expected input {[INPUT_NAME]} / output {[OUTPUT_NAME]}, got {names_in} / "
                                      f"{names_out}")

    data = proto.SerializeToString()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    diffs = []
    checked = sorted({1, len(x)})
    for n in checked:
        got = run_onnx(data, x[:n])
        if got.shape != ref[:n].shape:
            raise ExportVerificationError(f"ORT output shape {got.shape} != torch {ref[:n].shape} at batch {n}")
        diffs.append(float(np.abs(got - ref[:n]).max()))
    max_diff = max(diffs)
    if not np.isfinite(max_diff) or max_diff > atol:
        raise ExportVerificationError(f"ONNX Runtime output differs from torch by {max_diff:.3g} > atol={atol:g}; "
                                      f"the {exporter} export is not faithful")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(data)
    Path(tmp.name).replace(path)
    return OnnxExportReport(path=str(path), exporter=exporter, fallback_reason=reason, opset=got_opset,
                            simplified=simplify, max_abs_diff=max_diff, atol=atol, batch_sizes_checked=checked,
                            op_counts=dict(Counter(n.op_type for n in proto.graph.node)), size_bytes=len(data))
