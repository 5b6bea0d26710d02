"""ONNX Runtime on the CPU: the reference backend for fp32 and Q/DQ INT8 ONNX models."""
from __future__ import annotations

import numpy as np

from fiqa_runtimes.base import ModelFormat, NamedIOBackend, loading_model, read_model


class OnnxRuntimeBackend(NamedIOBackend):
    name = "onnxruntime"
    formats = (ModelFormat.ONNX,)
    runs_concurrently = True  # InferenceSession.run is thread-safe: each call gets its own intermediate tensors

    def __init__(self, model: bytes | str, threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        super().__init__()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        model = read_model(model)
        with loading_model(self.name):  # e.g. Fail: an opset newer than this ONNX Runtime supports
            self._session = ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        outs = self._session.run(self._outputs, feeds)
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self._outputs, outs)}
