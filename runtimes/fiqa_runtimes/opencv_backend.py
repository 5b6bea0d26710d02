"""OpenCV's DNN module as an ONNX engine: always present on the device, so the detector never
needs a second runtime next to the one that scores faces."""
from __future__ import annotations

import numpy as np

from fiqa_runtimes.base import ModelFormat, NamedIOBackend, loading_model, read_model


class OpenCVDnnBackend(NamedIOBackend):
    name = "opencv"
    formats = (ModelFormat.ONNX,)

    def __init__(self, model: bytes | str, threads: int | None = None, input_names: list[str] | None = None):
        """OpenCV cannot list a graph's input names, so multi-input models must name them here;
        a single-input model is fed positionally whatever its input is called."""
        import cv2

        super().__init__()
        if threads:
            cv2.setNumThreads(int(threads))
        data = np.frombuffer(read_model(model), np.uint8)
        with loading_model(self.name):  # cv2.error: a layer this OpenCV's importer lacks
            self._net = cv2.dnn.readNetFromONNX(data)
            self._outputs = list(self._net.getUnconnectedOutLayersNames())
        self._inputs = list(input_names) if input_names else ["input"]

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(inputs) == 1 and len(self._inputs) == 1:
            self._net.setInput(np.ascontiguousarray(next(iter(inputs.values())), dtype=np.float32))
        else:
            for name, value in inputs.items():
                self._net.setInput(np.ascontiguousarray(value, dtype=np.float32), name)
        outs = self._net.forward(self._outputs)
        # copies: forward's arrays may share the net's output blobs, which the next call rewrites
        return {n: np.array(o, dtype=np.float32) for n, o in zip(self._outputs, outs)}
