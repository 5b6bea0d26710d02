"""Deployment targets: which artifacts each device gets and which runtime runs them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    artifacts: tuple[str, ...]        # from ARTIFACTS below, in backend-preference order
    tensorrt: bool = False            # ship what builds a TensorRT engine on the device (Q/DQ ONNX + build settings)


# name -> (file name, format, precision, backends that run it)
ARTIFACTS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "onnx_qdq": ("student_qdq.onnx", "onnx", "int8-qdq", ("tensorrt", "onnxruntime")),
    "tflite_int8": ("student_int8.tflite", "tflite", "int8", ("litert", "tflite-runtime")),
    "onnx_fp32": ("student_fp32.onnx", "onnx", "fp32", ("onnxruntime", "opencv")),
}

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("jetson-orin", "NVIDIA Jetson Orin (AGX / NX / Nano), JetPack 5.1 / 6: TensorRT engine built on the device from "
           "the explicit-quantisation Q/DQ INT8 ONNX; ONNX Runtime as fallback", ("onnx_qdq", "onnx_fp32"), tensorrt=True),
    Target("android-arm64", "Android / ARM64 phones: full-INT8 TFLite for LiteRT (XNNPACK)", ("tflite_int8",)),
    Target("raspberry-pi", "Raspberry Pi 4/5 and other ARM boards: full-INT8 TFLite for LiteRT", ("tflite_int8",)),
    Target("cpu", "x86-64 / ARM CPUs with ONNX Runtime: Q/DQ INT8 ONNX (ORT runs it as INT8), fp32 as fallback",
           ("onnx_qdq", "onnx_fp32")),
)}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]
