"""Trained teachers as a scoring panel: utility (ViT-FIQA) and perceptual (DSL-FIQA), on their label scales.

A teacher is a directory (or the embedded default) holding ``teacher.pt`` (weights only) and
``teacher.json`` (model name, config, score normalisation, sha256). The sha256 is checked before
the weights are read, and the weights are read with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fiqa_compile.records import read_record
from fiqa_compile.train.data import to_tensor

EMBEDDED_TEACHERS = Path(__file__).resolve().parent / "weights"

# Test-time views of the utility teacher: the crop and its mirror, each as is and shifted 2 px up, down, left
# and right (a device's detector and landmarks move a crop that much). A single view of the small ViT is not
# repeatable at that scale (SRCC ~0.90 with itself after a 2 px re-alignment); the mean over these ten is.
# The set maps onto itself under a mirror, so the mean is exactly flip-invariant.
TTA_SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2))


def tta_views(crops: np.ndarray, shifts: tuple[tuple[int, int], ...] = TTA_SHIFTS) -> list[np.ndarray]:
    """The crops ([N,H,W,3] uint8) shifted by each (dx, dy) and mirrored: 2 * len(shifts) arrays of the same shape.

    Shifted-in borders are reflected (as the training augmentation does: OpenCV's BORDER_REFLECT_101 is numpy's
    "reflect"), so no black edge is scored. Whole-pixel shifts are slices of one padded batch.
    """
    h, w = crops.shape[1:3]
    m = max((max(abs(dx), abs(dy)) for dx, dy in shifts), default=0)
    padded = np.pad(crops, ((0, 0), (m, m), (m, m), (0, 0)), mode="reflect")
    views = []
    for dx, dy in shifts:  # pixel x of the view shows pixel x - dx of the crop
        moved = padded[:, m - dy:m - dy + h, m - dx:m - dx + w]
        views += [np.ascontiguousarray(moved), np.ascontiguousarray(moved[:, :, ::-1])]
    return views


class TeacherError(ValueError):
    pass


@dataclass
class Teacher:
    task: str            # "utility" | "perceptual"
    model: torch.nn.Module
    info: dict
    path: Path

    @property
    def mean(self) -> float:
        return float(self.info["score"]["mean"])

    @property
    def std(self) -> float:
        return float(self.info["score"]["std"])

    @torch.no_grad()
    def score(self, crops: np.ndarray, lm68: np.ndarray | None = None, batch_size: int = 128,
              tta: bool = False) -> np.ndarray:
        """Scores of aligned BGR uint8 crops on the label scale (CR for utility, pseudo-MOS for perceptual).

        ``tta``: the utility teacher's mean over :func:`tta_views` (10x the work); the perceptual teacher
        already averages its own crops and ignores it.
        """
        if tta and self.task == "utility":
            return np.mean([self.score(v, batch_size=batch_size) for v in tta_views(crops)], axis=0)
        self.model.eval()
        out = []
        for k in range(0, len(crops), batch_size):
            x = to_tensor(crops[k:k + batch_size])
            if self.task == "utility":
                raw = self.model(x).quality
            else:
                lm = None if lm68 is None else torch.from_numpy(np.ascontiguousarray(lm68[k:k + batch_size]))
                raw = self.model(x, landmarks=lm)
            out.append(raw.float().numpy() * self.std + self.mean)
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def load_teacher(path: str | Path) -> Teacher:
    """Load a teacher from its run directory (teacher.json + teacher.pt), verifying the weights' sha256."""
    from fiqa_compile.models.registry import create_model

    path = Path(path)
    meta_path = path / "teacher.json" if path.is_dir() else path.with_suffix(".json")
    weights = meta_path.with_name("teacher.pt") if path.is_dir() else path
    if not meta_path.is_file() or not weights.is_file():
        raise TeacherError(f"teacher at {path} needs teacher.json and teacher.pt (made by fiqa-train)")
    info = read_record(meta_path, ("model", "task", "sha256"), TeacherError, "restore it, or retrain with fiqa-train")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != info.get("sha256"):
        raise TeacherError(f"{weights} has sha256 {digest[:12]}..., but {meta_path.name} records "
                           f"{str(info.get('sha256'))[:12]}...: the file is corrupt or was replaced; retrain or restore it")
    try:
        model = create_model(info["model"])
    except KeyError as e:
        raise TeacherError(f"{meta_path} names model {info['model']!r}, which this fiqa-sdk does not know "
                           f"({e.args[0] if e.args else e}); use the fiqa-sdk version that trained it") from e
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001
        raise TeacherError(f"cannot load {weights} into {info['model']}: {e}") from e
    model.eval()
    return Teacher(task=info["task"], model=model, info=info, path=path)


def load_teacher_pair(utility: str | Path | None = None, perceptual: str | Path | None = None) -> dict[str, Teacher]:
    """Both teachers by role (None: the embedded one). A teacher passed for the other role is refused here, not
    after minutes of scoring with the wrong model."""
    defaults = embedded_teacher_dirs()
    teachers = {}
    for role, path in (("utility", utility), ("perceptual", perceptual)):
        teacher = load_teacher(path or defaults[role])
        if teacher.task != role:
            raise TeacherError(f"--{role}-teacher {teacher.path} is a {teacher.task} teacher "
                               f"({teacher.info.get('model')}); pass one made by `fiqa-train {role}`")
        teachers[role] = teacher
    return teachers


def embedded_teacher_dirs() -> dict[str, Path]:
    return {"utility": EMBEDDED_TEACHERS / "vit_fiqa_mini", "perceptual": EMBEDDED_TEACHERS / "dsl_fiqa_tiny"}
