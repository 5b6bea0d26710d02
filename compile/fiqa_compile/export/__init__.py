"""Turning a trained torch student into verified deployable artifacts.

One module per stage, each verifying what it writes (the compile can stop on any of them):

* :mod:`.onnx_export`  -- fp32 ONNX (dynamo exporter, dynamic batch, opset 17, onnxsim), checked against torch.
* :mod:`.calibrators`  -- calibration data reader, activation ranges (min-max / percentile / entropy), and the
  TensorRT implicit-INT8 calibration cache format.
* :mod:`.qdq`          -- symmetric per-channel INT8 Q/DQ ONNX for TensorRT explicit quantisation.
* :mod:`.trt_check`    -- offline TensorRT ONNX-parser op allow-list and Q/DQ rules.
* :mod:`.tflite`       -- float and full-INT8 TFLite through litert-torch PT2E.
* :mod:`.fidelity`     -- rank agreement / error of a converted model against fp32.

Submodules are imported on use: torch, onnxruntime and litert-torch are heavy, and each stage needs only some.
"""
