"""Activation range selection for INT8: calibration data readers, calibrators, and range serialisation.

This module only *measures* ranges; rewriting graphs is :mod:`fiqa_compile.export.qdq`'s job (ONNX Runtime
keeps the same split: ``CalibrationDataReader`` -> ``create_calibrator`` -> ``QDQQuantizer``).

Min-max and percentile are a thin layer over ONNX Runtime's calibrators (re-implementing them would only
add divergence); entropy uses ORT for the min-max pass and does the histogram and KL search here:

* ``minmax``     -- the largest |activation| seen. No clipping; one outlier can waste most of the 8 bits.
* ``percentile`` -- the ``percentile``-th percentile of |activation| (histogram of ``num_bins`` bins).
* ``entropy``    -- the threshold minimising the KL divergence between the |activation| histogram and its
  128-level quantisation (TensorRT's ``EntropyCalibrator2``; implemented here, see
  :func:`compute_activation_ranges` for why ORT's is not used).

Every range is reduced to a symmetric ``amax`` = max(|low|, |high|): TensorRT's explicit quantisation needs
zero points of 0, so the INT8 scale of a tensor is ``amax / 127``. The same numbers feed the Q/DQ model
(via ORT's JSON range cache) and the TensorRT implicit-INT8 calibration cache, so both deployments quantise
each tensor identically.
"""
from __future__ import annotations

import contextlib
import io
import logging
import struct
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
from onnxruntime.quantization.calibrate import TensorData, TensorsData

log = logging.getLogger(__name__)

INT8_QMAX = 127  # symmetric INT8: [-127, 127] (TensorRT and ORT's ActivationSymmetric both use 127)


class CalibMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"

    @property
    def ort(self) -> CalibrationMethod:
        return {CalibMethod.MINMAX: CalibrationMethod.MinMax, CalibMethod.PERCENTILE: CalibrationMethod.Percentile,
                CalibMethod.ENTROPY: CalibrationMethod.Entropy}[self]


class CalibrationError(ValueError):
    """Calibration data or results that would give a wrong INT8 model."""


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds a preprocessed batch array ([N,3,112,112] float32, from a calibration set) in fixed-size chunks.

    Rewindable, so the same reader can serve several calibrators; ``set_range`` supports ORT's strided mode.
    """

    def __init__(self, tensors: np.ndarray, input_name: str = "faces", batch_size: int = 32):
        x = np.asarray(tensors)
        if x.ndim != 4 or x.dtype != np.float32:
            raise CalibrationError(f"calibration tensors must be float32 [N,C,H,W] (fiqa_sdk.preprocess."
                                   f"faces_to_tensor output), got {x.dtype} {x.shape}")
        if len(x) == 0:
            raise CalibrationError("calibration tensors are empty")
        if not np.isfinite(x).all():
            raise CalibrationError("calibration tensors contain NaN/inf")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors, self.input_name, self.batch_size = x, input_name, int(batch_size)
        self._start, self._end = 0, len(x)
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        chunk = self.tensors[self._pos:min(self._pos + self.batch_size, self._end)]
        self._pos += len(chunk)
        return {self.input_name: np.ascontiguousarray(chunk)}

    def rewind(self) -> None:
        self._pos = self._start

    def __len__(self) -> int:
        return self._end - self._start

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = max(0, start_index), min(len(self.tensors), end_index)
        self._pos = self._start


@dataclass
class ActivationRanges:
    """Per-tensor activation ranges of one model, as measured by one calibration method."""

    method: CalibMethod
    ranges: dict[str, tuple[float, float]]  # tensor name -> (low, high) as the calibrator reported it
    num_samples: int
    tensors_data: TensorsData | None = None  # ORT's own object, kept so ORT can consume it unchanged

    def amax(self, name: str) -> float:
        lo, hi = self.ranges[name]
        return float(max(abs(lo), abs(hi)))

    def int8_scale(self, name: str) -> np.float32:
        """The symmetric INT8 scale ORT's QDQ quantiser will give this tensor (amax/127; 1.0 for an all-zero
        tensor, as ORT does, so that no scale is ever 0)."""
        s = np.float64(np.float32(self.amax(name))) / INT8_QMAX
        return np.float32(s) if s >= np.finfo(np.float32).tiny else np.float32(1.0)

    def save_ort_cache(self, path: str | Path) -> Path:
        """Write ORT's JSON range cache, which ``quantize_static(calibration_cache_path=...)`` reads back."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        if self.tensors_data is None:
            raise CalibrationError("these ranges were not measured by an ORT calibrator; cannot write its cache")
        path = Path(path)
        save_tensors_data(self.tensors_data, path)
        return path

    def to_json(self) -> dict:
        return {"method": self.method.value, "num_samples": self.num_samples,
                "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(self.ranges.items())}}


def _ort_ranges(model_path: Path, reader: ArrayCalibrationReader, method: CalibrationMethod,
                extra: dict) -> TensorsData:
    reader.rewind()
    with tempfile.TemporaryDirectory(prefix="fiqa-calib-") as tmp, contextlib.redirect_stdout(io.StringIO()) as out:
        calibrator = create_calibrator(model_path, [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method, extra_options=extra)
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
        del calibrator
    log.debug("ORT calibrator output:\n%s", out.getvalue())
    reader.rewind()
    return data


def collect_abs_histograms(model_path: str | Path, reader: ArrayCalibrationReader, amax: Mapping[str, float],
                           num_bins: int = 2048) -> dict[str, np.ndarray]:
    """Histograms of |activation| over [0, amax] for every tensor in ``amax`` (TensorRT's second pass).

    ``amax`` comes from a min-max pass, so every value lands in a bin and bins are comparable across batches.
    """
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    graph_inputs = {i.name for i in model.graph.input}
    names = [n for n, a in amax.items() if a > 0]
    fetch = [n for n in names if n not in graph_inputs]  # graph inputs are read from the feed itself
    have = {o.name for o in model.graph.output}
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for n in fetch:
        if n not in have:
            if n not in inferred:
                raise CalibrationError(f"no type information for tensor {n!r}; run quant_pre_process first")
            model.graph.output.append(inferred[n])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor observable
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    hists = {n: np.zeros(num_bins, dtype=np.int64) for n in names}
    reader.rewind()
    for feed in iter(reader.get_next, None):
        values = dict(zip(fetch, sess.run(fetch, feed)))
        values.update({n: feed[n] for n in names if n in graph_inputs})
        for n in names:
            hists[n] += np.histogram(np.abs(values[n]), bins=num_bins, range=(0.0, amax[n]))[0]
    reader.rewind()
    return hists


def entropy_amax(hist: np.ndarray, amax: float, num_quantized_bins: int = 128, start_bin: int = 128,
                 stride: int = 4, block: int = 128) -> float:
    """TensorRT ``EntropyCalibrator2``-style threshold: the clip value whose 128-level quantisation of the
    |activation| histogram (bins over [0, amax]) has the least KL divergence from the clipped histogram.

    Candidates are every ``stride``-th bin from ``start_bin`` (stride 4 of 2048 bins: thresholds 0.2% of amax
    apart, 4x cheaper than every bin, same choice to within that step on our students), vectorised ``block``
    at a time. Like TensorRT and NVIDIA's
    pytorch-quantization, the first bin is set to the second so that the ReLU zeros do not dominate.
    """
    h = np.asarray(hist, dtype=np.float64).copy()
    n = len(h)
    if n < 2 or h.sum() == 0:
        return float(amax)
    h[0] = h[1]
    total = h.sum()
    csum = np.cumsum(h)
    cands = np.arange(min(start_bin, n), n + 1, stride)
    j = np.arange(n)
    best_kl, best_i = np.inf, n
    for lo in range(0, len(cands), block):
        i = cands[lo:lo + block][:, None]                        # [m,1] candidate bin counts
        m = len(i)
        inside = j[None, :] < i                                   # [m,n]
        p = np.where(inside, h[None, :], 0.0)
        p[np.arange(m), i[:, 0] - 1] += total - csum[i[:, 0] - 1]  # clipped outliers go to the last kept bin
        chunk = np.minimum((j[None, :] * num_quantized_bins) // i, num_quantized_bins - 1)
        chunk = np.where(inside, chunk, num_quantized_bins)       # bins past the threshold: a dummy chunk
        nz = inside & (h[None, :] > 0)
        flat = (np.arange(m)[:, None] * (num_quantized_bins + 1) + chunk).ravel()
        size = m * (num_quantized_bins + 1)
        sums = np.bincount(flat, weights=np.where(nz, h[None, :], 0.0).ravel(), minlength=size).reshape(m, -1)
        cnts = np.bincount(flat, weights=nz.ravel().astype(np.float64), minlength=size).reshape(m, -1)
        rows = np.arange(m)[:, None]
        q = np.where(nz, sums[rows, chunk] / np.maximum(cnts[rows, chunk], 1.0), 0.0)
        p /= p.sum(1, keepdims=True)
        q /= np.maximum(q.sum(1, keepdims=True), 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / q), 0.0)       # q == 0 where p > 0 -> inf: never chosen
        kl = terms.sum(1)
        k = int(np.argmin(kl))
        if kl[k] < best_kl:
            best_kl, best_i = kl[k], int(i[k, 0])
    return float(amax) * best_i / n


def compute_activation_ranges(model_path: str | Path, reader: ArrayCalibrationReader,
                              method: CalibMethod | str = CalibMethod.ENTROPY, *, percentile: float = 99.999,
                              num_bins: int = 2048, entropy_stride: int = 4, min_samples: int = 16) -> ActivationRanges:
    """Run ``reader``'s batches through the fp32 ONNX at ``model_path`` and pick a range for every float tensor.

    ``minmax`` and ``percentile`` are ORT's calibrators (symmetric, ``num_bins`` histogram bins). ``entropy`` is a
    min-max pass followed by :func:`collect_abs_histograms` and :func:`entropy_amax`, not ORT's
    EntropyCalibrater: that one searches thresholds in a Python loop (46 s for a 60-tensor student on one core),
    and with its default 128 bins it has a single candidate and silently equals min-max.
    """
    method = CalibMethod(method)
    model_path = Path(model_path)
    if len(reader) < min_samples:
        raise CalibrationError(f"only {len(reader)} calibration samples; need >= {min_samples} (use a calibration "
                               "set from fiqa_calibration.calibration_set, 300-500 faces)")
    if method is CalibMethod.PERCENTILE and not 90.0 <= percentile < 100.0:
        raise ValueError(f"percentile must be in [90, 100), got {percentile}")
    if method is CalibMethod.PERCENTILE:
        # ORT's histogram collector stacks each tensor's per-batch outputs with np.asarray, which fails on a
        # short last batch: feed equal batches (the largest batch size <= the reader's that divides N).
        n = len(reader)
        even = max(b for b in range(1, min(reader.batch_size, n) + 1) if n % b == 0)
        reader = ArrayCalibrationReader(reader.tensors[reader._start:reader._end], reader.input_name, even)
        data = _ort_ranges(model_path, reader, CalibrationMethod.Percentile,
                           {"symmetric": True, "percentile": float(percentile), "num_bins": int(num_bins)})
    else:
        data = _ort_ranges(model_path, reader, CalibrationMethod.MinMax, {"symmetric": True})
    ranges: dict[str, tuple[float, float]] = {}
    for name, td in data.items():
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CalibrationError(f"tensor {name!r} got a non-finite range ({lo}, {hi}); the model produces "
                                   "NaN/inf on the calibration data")
        ranges[name] = (lo, hi)
    if not ranges:
        raise CalibrationError(f"the calibrator found no float tensors in {model_path}")
    if method is CalibMethod.ENTROPY:
        maxes = {n: max(abs(lo), abs(hi)) for n, (lo, hi) in ranges.items()}
        hists = collect_abs_histograms(model_path, reader, maxes, num_bins)
        for n in ranges:
            a = entropy_amax(hists[n], maxes[n], stride=entropy_stride) if n in hists else maxes[n]
            ranges[n] = (-a, a)
        data = TensorsData(CalibrationMethod.Entropy, {
            n: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for n, (lo, hi) in ranges.items()})
    return ActivationRanges(method=method, ranges=ranges, num_samples=len(reader), tensors_data=data)


# ---- TensorRT implicit-INT8 calibration cache (TensorRT <= 10) -------------------------------------------------
# Text format written by TensorRT's IInt8Calibrator::writeCalibrationCache and read back by readCalibrationCache:
#   line 1:   TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2
#   then one  "<tensor name>: <8 hex digits>"  line per tensor, the hex being the big-endian bits of the float32
#   scale amax/127. NV_TENSORRT_VERSION is major*1000+minor*100+patch up to TensorRT 9 (8.6.2 -> 8602) and
#   major*10000+minor*100+patch from TensorRT 10 (10.3.0 -> 100300). TensorRT refuses a cache whose calibrator
#   name differs from the calibrator reading it, so the header always names EntropyCalibration2 (what trtexec's
#   --calib uses) whatever method chose the ranges; the method is recorded in the bundle manifest instead.

TRT_CACHE_ALGORITHM = "EntropyCalibration2"


def trt_version_number(version: str) -> int:
    """'8.6.2' -> 8602, '10.3.0' -> 100300 (TensorRT's NV_TENSORRT_VERSION; the device runtime's own rule)."""
    from fiqa_runtimes.tensorrt_backend import calibration_cache_version

    return calibration_cache_version(version)


def _scale_hex(scale: float) -> str:
    return struct.pack(">f", float(scale)).hex()


def write_trt_calibration_cache(ranges: ActivationRanges, path: str | Path, trt_version: str = "10.3.0",
                                tensor_names: list[str] | None = None,
                                scales: Mapping[str, float] | None = None) -> Path:
    """Write the activation scales as a TensorRT calibration cache (``trtexec --int8 --calib=PATH``).

    ``trt_version`` stamps the header (JetPack 5.1: 8.5.2, JetPack 6.0: 8.6.2, 6.1/6.2: 10.3.0). TensorRT skips a
    cache stamped for another version, so the device runtime re-stamps it for the TensorRT it runs
    (:func:`fiqa_runtimes.tensorrt_backend.restamp_calibration_cache`): one bundle serves all of them.
    ``tensor_names`` restricts the cache to these tensors (default: every calibrated tensor).
    ``scales`` overrides amax/127 for the tensors it names: pass the scales a Q/DQ model settled on
    (:attr:`fiqa_compile.export.qdq.QDQScan.activation_scales`) so both deployments quantise alike -- ORT gives a
    Conv output that only feeds a ReLU the ReLU's range, as TensorRT's Conv+ReLU fusion does.
    """
    scales = dict(scales or {})
    names = sorted(ranges.ranges) if tensor_names is None else list(tensor_names)
    missing = [n for n in names if n not in ranges.ranges]
    if missing:
        raise CalibrationError(f"no calibrated range for tensors {missing[:8]}")
    bad = [n for n in names if ":" in n or "\n" in n]
    if bad:
        raise CalibrationError(f"tensor names {bad[:4]} contain ':' or newlines, which the cache format cannot hold")
    lines = [f"TRT-{trt_version_number(trt_version)}-{TRT_CACHE_ALGORITHM}"]
    unknown = sorted(set(scales) - set(names))
    if unknown:
        raise CalibrationError(f"scale overrides for tensors outside the cache: {unknown[:8]}")
    lines += [f"{n}: {_scale_hex(scales[n] if n in scales else ranges.int8_scale(n))}" for n in names]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class TrtCalibrationCache:
    version_number: int
    algorithm: str
    scales: dict[str, float]


def read_trt_calibration_cache(path: str | Path) -> TrtCalibrationCache:
    """Parse a TensorRT calibration cache text file (the inverse of :func:`write_trt_calibration_cache`)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise CalibrationError(f"{path} is empty")
    head = lines[0].split("-")
    if len(head) != 3 or head[0] != "TRT" or not head[1].isdigit():
        raise CalibrationError(f"{path}: first line {lines[0]!r} is not 'TRT-<version>-<calibrator>'")
    scales = {}
    for i, ln in enumerate(lines[1:], start=2):
        name, sep, hx = ln.rpartition(": ")
        if not sep or len(hx) != 8:
            raise CalibrationError(f"{path}:{i}: {ln!r} is not '<tensor>: <8 hex digits>'")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(hx))[0]
        except ValueError as e:
            raise CalibrationError(f"{path}:{i}: bad hex {hx!r}") from e
    return TrtCalibrationCache(version_number=int(head[1]), algorithm=head[2], scales=scales)
