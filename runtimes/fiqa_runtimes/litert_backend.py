"""LiteRT (ai-edge-litert) and, as a fallback, tflite-runtime: TFLite models, float or full-INT8.

Full-INT8 models take int8 inputs and give int8 outputs; this backend quantises and
dequantises with the tensors' own scale/zero-point so callers always see float32, and
transposes NCHW batches to NHWC when the model was converted channels-last. A caller that can
quantise its data itself (fiqa_sdk's uint8 faces, through a lookup table) hands the integers to
:meth:`LiteRTBackend.run_quantized` instead: no float tensor, no per-call lookups.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from fiqa_runtimes.base import Backend, ModelFormat, QuantizedInput, loading_model, quantize_affine, read_model


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    if not scale:
        raise ValueError(f"tensor {detail['name']} is {dtype} but carries no quantisation parameters")
    return quantize_affine(x, dtype, scale, zero)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if y.dtype == np.float32:
        return y
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _dequantize_table(detail: dict) -> np.ndarray | None:
    """For an int8/uint8 tensor, the float32 that :func:`_dequantize` makes of each of its 256 values, in the order
    of the values' bytes read as uint8 (int8 -1 is byte 255); None for other tensors."""
    dtype = detail["dtype"]
    if dtype not in (np.int8, np.uint8) or not detail["quantization"][0]:
        return None
    return _dequantize(np.arange(256, dtype=np.uint8).view(dtype), detail)


class LiteRTBackend(Backend):
    name = "litert"
    formats = (ModelFormat.TFLITE,)

    @staticmethod
    def _interpreter_class():
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter

    def __init__(self, model: bytes | str, threads: int | None = None):
        super().__init__()
        Interpreter = self._interpreter_class()
        data = read_model(model)
        # ValueError (not a flatbuffer) or RuntimeError (an operator, or operator version, this LiteRT lacks)
        with loading_model(self.name):
            self._interp = Interpreter(model_content=data, num_threads=int(threads) if threads else None)
            self._interp.allocate_tensors()
        self._batch = None
        self._details()
        self._qin: QuantizedInput | None = None  # one int8/uint8 input with its scale: run_quantized takes it
        if len(self._in) == 1 and self._in[0]["dtype"] in (np.int8, np.uint8) and self._in[0]["quantization"][0]:
            d = self._in[0]
            scale, zero = d["quantization"]
            self._qin = QuantizedInput(name=d["name"], dtype=d["dtype"], scale=float(scale), zero_point=int(zero),
                                       shape=tuple(int(v) for v in d["shape"]))
        self._qbuf: np.ndarray | None = None  # run_quantized's input, kept for the current batch size

    def _details(self) -> None:
        """Tensor details after (re)allocation: looked up once per batch size, not per call."""
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self._by_name = {d["name"]: d for d in self._in}
        # (name, index, table): an 8-bit output dequantises by one look-up in the 256 floats _dequantize makes of
        # its 256 values (indexed by the bytes as uint8); other outputs go through _dequantize
        self._outputs = [(d["name"], d["index"], _dequantize_table(d)) for d in self._out]

    def _resize(self, batch: int) -> None:
        for d in self._in:
            shape = list(d["shape"])
            shape[0] = batch
            self._interp.resize_tensor_input(d["index"], shape)
        self._interp.allocate_tensors()
        self._details()
        self._batch = batch
        self._qbuf = None

    @property
    def input_names(self) -> list[str]:
        return [d["name"] for d in self._in]

    @property
    def output_names(self) -> list[str]:
        return [d["name"] for d in self._out]

    @property
    def input_details(self) -> list[dict]:
        return list(self._in)

    def _fit_layout(self, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
        # Accept NCHW batches for NHWC models (and the reverse) when the channel dims disambiguate.
        if x.ndim == 4 and tuple(x.shape[1:]) != tuple(shape[1:]):
            if tuple(x.transpose(0, 2, 3, 1).shape[1:]) == tuple(shape[1:]):
                return x.transpose(0, 2, 3, 1)
            if tuple(x.transpose(0, 3, 1, 2).shape[1:]) == tuple(shape[1:]):
                return x.transpose(0, 3, 1, 2)
            raise ValueError(f"input of shape {x.shape} does not fit the model's {tuple(shape)}")
        return x

    @property
    def quantized_input(self) -> QuantizedInput | None:
        return self._qin

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(inputs) == 1 and len(self._in) == 1:
            inputs = {self._in[0]["name"]: next(iter(inputs.values()))}
        batch = {len(np.asarray(v)) for v in inputs.values()}.pop()
        if batch != self._batch:
            self._resize(batch)
        for name, value in inputs.items():
            if name not in self._by_name:
                raise KeyError(f"model has no input {name!r}; inputs: {list(self._by_name)}")
            d = self._by_name[name]
            x = self._fit_layout(np.asarray(value, dtype=np.float32), d["shape"])
            self._interp.set_tensor(d["index"], np.ascontiguousarray(_quantize(x, d)))
        return self._invoke()

    def _infer_quantized(self, batch: int, fill: Callable[[np.ndarray], None]) -> dict[str, np.ndarray]:
        if batch != self._batch:
            self._resize(batch)
        if self._qbuf is None:
            self._qbuf = np.zeros(self._in[0]["shape"], self._qin.dtype)
        fill(self._qbuf)
        self._interp.set_tensor(self._in[0]["index"], self._qbuf)  # copies 37 kB a face; checks shape, dtype
        return self._invoke()

    def _invoke(self) -> dict[str, np.ndarray]:
        self._interp.invoke()
        # get_tensor copies out of the interpreter (tensor() would be a view), so results survive the next call
        out = {}
        for (name, index, table), d in zip(self._outputs, self._out):
            y = self._interp.get_tensor(index)
            out[name] = table.take(y.view(np.uint8)) if table is not None else _dequantize(y, d)
        return out


class TfliteRuntimeBackend(LiteRTBackend):
    """The legacy ``tflite-runtime`` wheel: only where ai-edge-litert is not installable."""

    name = "tflite-runtime"

    @staticmethod
    def _interpreter_class():
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
