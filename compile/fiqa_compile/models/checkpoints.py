"""Loading foreign (authors') checkpoints through an explicit key map, never a silent strict=False."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch


class CheckpointMismatch(ValueError):
    """A checkpoint whose keys or shapes do not match the model."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)       # model keys the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)    # checkpoint keys (after mapping) the model lacks
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, ckpt shape, model shape
    ignored: list[str] = field(default_factory=list)       # checkpoint keys the map dropped on purpose

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def describe(self, limit: int = 12) -> str:
        def head(xs):
            xs = [str(x) for x in xs]
            return ", ".join(xs[:limit]) + (f", ... (+{len(xs) - limit})" if len(xs) > limit else "")
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {head(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {head(self.unexpected)}")
        if self.shape_mismatch:
            parts.append(f"{len(self.shape_mismatch)} shape mismatches: "
                         + head(f"{k} ckpt{tuple(a)} vs model{tuple(b)}" for k, a, b in self.shape_mismatch))
        return "; ".join(parts) or "all keys matched"


# A key map takes a checkpoint key and returns the model key, or None to drop it on purpose.
KeyMap = Callable[[str], "str | None"]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True``) and unwrap the usual containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointMismatch(f"cannot read checkpoint {path}: {e}. It must be a torch state_dict saved with "
                                 "torch.save (pickled code objects are refused on purpose).") from e
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path} does not hold a state_dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_foreign_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                            key_map: KeyMap | None = None, strict: bool = True) -> LoadReport:
    """Map checkpoint keys onto ``model`` and load them; report missing/unexpected/mis-shaped keys.

    With ``strict=True`` (the default) any mismatch raises :class:`CheckpointMismatch` naming the keys and
    nothing is loaded. ``strict=False`` must be asked for and still returns the full report.
    """
    key_map = key_map or (lambda k: k)
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    report = LoadReport()
    for k, v in state_dict.items():
        target = key_map(k)
        if target is None:
            report.ignored.append(k)
            continue
        if target not in own:
            report.unexpected.append(k if target == k else f"{k}->{target}")
            continue
        if tuple(own[target].shape) != tuple(v.shape):
            report.shape_mismatch.append((target, tuple(v.shape), tuple(own[target].shape)))
            continue
        mapped[target] = v
    report.missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    if strict and not report.ok:
        raise CheckpointMismatch(f"checkpoint does not fit {type(model).__name__}: {report.describe()}. "
                                 "Check the config (e.g. ViT-FIQA mode/depth), or pass strict=False to load the rest.")
    model.load_state_dict({**own, **mapped}, strict=True)
    return report
