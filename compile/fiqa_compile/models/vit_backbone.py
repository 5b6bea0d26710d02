"""A plain ViT (Dosovitskiy et al. 2021) with timm's parameter names, returning intermediate block outputs.

Why our own module: the teachers must load the authors' checkpoints, which store a timm
``VisionTransformer`` under ``vit.*`` (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head``), without depending
on timm or on forward hooks. :meth:`VisionTransformer.forward_intermediates` runs only as many blocks as
the requested outputs need, which is what MANIQA-style heads use (blocks 6-9 of 12).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fiqa_compile.models.layers import Mlp


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 384
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 1000   # 0: no ``head`` (timm's ImageNet head is kept only to match checkpoints)
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"ViT img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViT embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B, N, C


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, as timm
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a class token and learned absolute position embedding (timm ``vit_*`` layout)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        size = self.cfg.img_size
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans or tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"ViT expects (B, {self.cfg.in_chans}, {size}, {size}) input, got {tuple(x.shape)}; "
                             "crop or resize to the configured img_size first")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Outputs (B, 1 + N, C) of the blocks at ``indices`` (0-based), class token first.

        Only blocks up to ``max(indices)`` run: the later ones cannot change these outputs.
        """
        indices = list(indices)
        if not indices or min(indices) < 0 or max(indices) >= len(self.blocks):
            raise ValueError(f"block indices {indices} out of range for a depth-{len(self.blocks)} ViT")
        wanted = set(indices)
        outs: dict[int, torch.Tensor] = {}
        x = self._embed(x)
        for i, blk in enumerate(self.blocks[: max(indices) + 1]):
            x = blk(x)
            if i in wanted:
                outs[i] = x
        return [outs[i] for i in indices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class-token features after the final norm, through ``head`` when the config has one."""
        x = self._embed(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)[:, 0]
        return self.head(x) if self.head is not None else x
