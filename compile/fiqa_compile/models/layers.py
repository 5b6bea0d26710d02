"""Transformer building blocks shared by the teachers (ViT-FIQA, DSL-FIQA, the ViT-B/16 backbone).

Attribute names (``fc1``, ``fc2``) are the ones the authors' checkpoints use, so state_dict keys stay as they were.
"""
from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample during training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout (GELU in timm / MANIQA / Swin, ReLU6 in ViT-FIQA)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
