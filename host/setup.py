"""fiqa-compile's version and dependencies; everything else is in pyproject.toml beside this file.

The version is not written here: it is ``fiqa_sdk.__version__`` (sdk/fiqa_sdk/__init__.py), the single version of
both distributions, and fiqa-compile requires exactly that fiqa-sdk. tests/test_packaging.py checks the lock.
"""
from __future__ import annotations

import ast
from pathlib import Path

SDK_INIT = Path(__file__).resolve().parent.parent / "sdk" / "fiqa_sdk" / "__init__.py"


def sdk_version(init: Path = SDK_INIT) -> str:
    """``__version__`` of fiqa_sdk, read without importing it (the build environment has no numpy or OpenCV)."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    raise RuntimeError(f"no literal __version__ = '...' in {init}")


VERSION = sdk_version()
REQUIREMENTS = [
    # The device side at the same version, with the engines the compile verifies through (ONNX Runtime, LiteRT)
    # and the dlib detector + recogniser the labels use.
    f"fiqa-sdk[onnx,tflite,dlib]=={VERSION}",
    # torch: install the CPU wheel first (pip install torch==2.13.0 from pip's find-links or
    # https://download.pytorch.org/whl/cpu); 2.13.0+cpu satisfies this pin, so nothing pulls a CUDA build.
    "torch==2.13.0",
    "onnx>=1.16",
    "onnxscript>=0.2",
    "onnxsim==0.8.1",
    "litert-torch==0.10.0",
    "scipy>=1.11",
    "tqdm>=4.66",
    "matplotlib>=3.8",
]

if __name__ == "__main__":  # run by the build backend; tests import this file for VERSION and REQUIREMENTS
    from setuptools import setup

    setup(version=VERSION, install_requires=REQUIREMENTS)
