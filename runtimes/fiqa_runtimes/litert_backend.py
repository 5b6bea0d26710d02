"""LiteRT (ai-edge-litert) and, as a fallback, tflite-runtime: TFLite models, float or full-INT8.

Full-INT8 models take int8 inputs and give int8 outputs; this backend quantises and
dequantises with the tensors' own scale/zero-point so callers always see float32, and
transposes NCHW batches to NHWC when the model was converted channels-last.
"""
from __future__ import annotations

import numpy as np

from fiqa_runtimes.base import Backend, ModelFormat, loading_model, read_model


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    if not scale:
        raise ValueError(f"tensor {detail['name']} is {dtype} but carries no quantisation parameters")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if y.dtype == np.float32:
        return y
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


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
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self._batch = None

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

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        by_name = {d["name"]: d for d in self._in}
        if len(inputs) == 1 and len(self._in) == 1:
            inputs = {self._in[0]["name"]: next(iter(inputs.values()))}
        batch = {len(np.asarray(v)) for v in inputs.values()}.pop()
        if batch != self._batch:
            for d in self._in:
                shape = list(d["shape"])
                shape[0] = batch
                self._interp.resize_tensor_input(d["index"], shape)
            self._interp.allocate_tensors()
            self._in = self._interp.get_input_details()
            self._out = self._interp.get_output_details()
            by_name = {d["name"]: d for d in self._in}
            self._batch = batch
        for name, value in inputs.items():
            if name not in by_name:
                raise KeyError(f"model has no input {name!r}; inputs: {list(by_name)}")
            d = by_name[name]
            x = self._fit_layout(np.asarray(value, dtype=np.float32), d["shape"])
            self._interp.set_tensor(d["index"], np.ascontiguousarray(_quantize(x, d)))
        self._interp.invoke()
        # get_tensor copies out of the interpreter (tensor() would be a view), so results survive the next call
        return {d["name"]: _dequantize(self._interp.get_tensor(d["index"]), d) for d in self._out}


class TfliteRuntimeBackend(LiteRTBackend):
    """The legacy ``tflite-runtime`` wheel: only where ai-edge-litert is not installable."""

    name = "tflite-runtime"

    @staticmethod
    def _interpreter_class():
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
