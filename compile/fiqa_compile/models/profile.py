"""Parameter count and MACs of any registered model, so teachers and students are compared on the same scale.

MACs = FLOPs / 2 from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the matrix products
(mm/addmm/bmm/matmul, convolutions, fused attention kernels); normalisation, activations and softmax are not
counted (the usual convention; they are < 1% for these models). Counting runs on the ``meta`` device by default:
shapes only, no memory, no arithmetic, so even the paper-size teachers profile in well under a second.

Native input: a config gives its input by an ``input_shape`` attribute (C, H, W), or by ``img_size`` (int or
(H, W)) plus optional ``in_chans`` (default 3).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fiqa_compile.models.registry import create_model, get_config


@dataclass(frozen=True)
class ModelProfile:
    name: str
    params: int
    macs: int                          # per image at the native input, eval mode
    input_shape: tuple[int, int, int]  # (C, H, W)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BatchNorm running stats are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def native_input_shape(config: Any) -> tuple[int, int, int]:
    """(C, H, W) a config declares; see the module docstring for the convention."""
    shape = getattr(config, "input_shape", None)
    if shape is not None:
        shape = tuple(int(v) for v in shape)
        if len(shape) != 3:
            raise ValueError(f"{type(config).__name__}.input_shape must be (C, H, W), got {shape}")
        return shape  # type: ignore[return-value]
    size = getattr(config, "img_size", None)
    if size is None:
        raise TypeError(f"{type(config).__name__} declares no native input: give it an `input_shape` (C, H, W) "
                        "property or an `img_size` field (and `in_chans` if not 3)")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(getattr(config, "in_chans", 3)), int(h), int(w))


def count_macs(model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward of ``model`` on ``inputs`` (FLOPs / 2, see the module docstring)."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() // 2


def profile_model(name: str, device: str | torch.device = "meta", **overrides: Any) -> ModelProfile:
    """Build registered model ``name`` (with config overrides) in eval mode and count params and MACs per image."""
    shape = native_input_shape(get_config(name, **overrides))
    with torch.device(device):
        model = create_model(name, **overrides).eval()
        x = torch.zeros((1, *shape))
    return ModelProfile(name=name, params=count_params(model), macs=count_macs(model, x), input_shape=shape)
