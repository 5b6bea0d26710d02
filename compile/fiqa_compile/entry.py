"""Console-script entry points of the compile side.

Each command's module is imported only when the command runs, inside a guard: the console scripts come with the
fiqa-compile distribution (host/), which declares these packages, but an install without its dependencies
(``pip install --no-deps``, a removed torch) should say which package is missing and how to get it, not end in an
import traceback.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Callable

# Top-level modules that fiqa-compile's dependencies bring (host/setup.py); a missing one means they are missing.
COMPILE_EXTRA_MODULES = frozenset({"torch", "onnx", "onnxscript", "onnxsim", "onnxruntime", "litert_torch",
                                   "ai_edge_litert", "scipy", "tqdm", "matplotlib", "dlib", "face_recognition_models"})


def run_command(command: str, module: str, argv: list[str] | None = None) -> int:
    """Run ``module.main(argv)``; a compile-extra package that is not installed -> one line on stderr, exit 2."""
    try:
        main: Callable[[list[str] | None], int] = importlib.import_module(module).main
        return main(argv)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in COMPILE_EXTRA_MODULES or _installed(top):
            raise  # ours, or a broken / mismatched install of the package: the traceback is the information
        print(f"{command}: this command needs the fiqa-compile dependencies, and Python module {top!r} is not "
              "installed. Install them from the fiqa-sdk source with  "
              "pip install torch==2.13.0 && pip install . ./host  (torch first, so no dependency pulls a CUDA build; "
              "or run  bash scripts/setup.sh)", file=sys.stderr)
        return 2


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (as tests do) counts as absent
        return False


def compile_main(argv: list[str] | None = None) -> int:
    return run_command("fiqa-compile", "fiqa_compile.cli", argv)


def labels_main(argv: list[str] | None = None) -> int:
    return run_command("fiqa-labels", "fiqa_compile.labels.build", argv)


def train_main(argv: list[str] | None = None) -> int:
    return run_command("fiqa-train", "fiqa_compile.train.teacher", argv)


def distill_main(argv: list[str] | None = None) -> int:
    return run_command("fiqa-distill", "fiqa_compile.distill", argv)


def eval_main(argv: list[str] | None = None) -> int:
    return run_command("fiqa-eval", "fiqa_compile.eval.cli", argv)
