"""Distilled student directories (``student.pt`` + ``student.json``, made by ``fiqa-distill``).

One place knows where the embedded default lives, reads which architecture a directory holds, and loads its
weights only after their sha256 matches what ``student.json`` records, so a corrupt or swapped file is refused
by name before torch reads it (and then only with ``weights_only=True``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from fiqa_compile.errors import CompileError
from fiqa_compile.records import read_record

EMBEDDED_STUDENT = Path(__file__).resolve().parent / "weights" / "student_mfn"


def student_arch_of(path: Path) -> str:
    """The architecture a distilled student directory records (read before its weights are checked and loaded)."""
    try:
        return str(json.loads((Path(path) / "student.json").read_text())["student"])
    except (OSError, ValueError, KeyError) as e:
        raise CompileError(f"{path} is not a distilled student (student.json with its architecture): {e}") from e


def load_student(path: Path) -> tuple[torch.nn.Module, dict]:
    """The student model in eval mode and its ``student.json``; refuses missing, corrupt or mismatched files."""
    from fiqa_compile.models.registry import create_model

    path = Path(path)
    meta_path, weights = path / "student.json", path / "student.pt"
    if not meta_path.is_file() or not weights.is_file():
        missing = "; the embedded default is missing from this install" if path == EMBEDDED_STUDENT else ""
        raise CompileError(f"student at {path} needs student.json and student.pt (made by fiqa-distill){missing}")
    info = read_record(meta_path, ("student", "scores", "sha256"), CompileError, "restore it, or re-run fiqa-distill")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != info.get("sha256"):
        raise CompileError(f"{weights} has sha256 {digest[:12]}..., student.json records {str(info.get('sha256'))[:12]}"
                           "...: the file is corrupt or was replaced; re-run fiqa-distill or restore it")
    try:
        model = create_model(info["student"])
    except KeyError as e:
        raise CompileError(f"{meta_path} names architecture {info['student']!r}, which this fiqa-sdk does not "
                           f"know ({e.args[0] if e.args else e}); use the fiqa-sdk version that distilled it") from e
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"cannot load {weights} into {info['student']}: {e}") from e
    return model.eval(), info
