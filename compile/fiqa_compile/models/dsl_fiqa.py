"""DSL-FIQA (Chen et al., CVPR 2024): a MANIQA-style face IQA transformer with degradation queries and landmarks.

Structure (following the authors' released ``models/iqa.py``; see docs/dsl_fiqa.md for every choice):

* ``vit``: ViT-B/16 at 384; outputs of blocks 6-9 concatenated -> 3072 channels on the 24x24 patch grid.
* MANIQA stages: ``tablock1`` (transposed attention across channels), ``conv1`` (1x1, 3072->768),
  ``swintransformer1``, ``tablock2``, ``conv2`` (768->384), ``swintransformer2``.
* ``conv_decoder`` (384->256) and ``decoder``: cross-attention blocks whose QUERIES are the degradation
  encoder's 96 tokens (stretched to the 576 image tokens) and whose keys/values are the IQA tokens.
* Landmark guidance: which of the 68 landmarks fall inside the crop -> index code -> NeRF-style
  positional encoding -> ``embed_mlp`` -> one sigmoid gate per image token, appended as a feature channel.
* ``fc_score`` (ReLU) and ``fc_weight`` (Sigmoid) per token; crop score = sum(score * weight) / sum(weight);
  face score = mean over crops.

:class:`DSLFIQANet` is the authors' IQA net (their ``IQA.pt``), :class:`DSLFIQA` adds the degradation
encoder (their ``DE.pt``), face resizing, the crop sampler and landmark handling, taking our 112x112
ArcFace-aligned faces in [-1, 1].
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fiqa_compile.models.checkpoints import CheckpointMismatch, LoadReport, load_foreign_state_dict, read_state_dict
from fiqa_compile.models.degradation_encoder import DegradationEncoder, DegradationEncoderConfig
from fiqa_compile.models.layers import DropPath, Mlp
from fiqa_compile.models.registry import get_config, register_model
from fiqa_compile.models.vit_backbone import ViTConfig, VisionTransformer

# Mean dlib 68-point layout of ArcFace-aligned 112x112 faces (x, y pixels), used when no landmarks are given.
# Measured once on 766 LFW faces (dlib HOG detector + shape_predictor_68, aligned on the 5 points derived from
# the 68: eye centres, nose tip 30, mouth corners 48/54); the per-point std is ~2 px (median), 9 px at most.
MEAN_LANDMARKS_68_ARCFACE112: tuple[tuple[float, float], ...] = (
    (14.8, 54.6), (15.3, 65.4), (16.3, 76.2), (18.3, 86.8), (22.2, 96.8), (28.4, 105.6),
    (36.4, 112.9), (45.6, 118.6), (56.2, 120.3), (66.8, 118.6), (76.1, 112.9), (84.1, 105.6),
    (90.2, 96.7), (94.0, 86.7), (95.9, 76.0), (96.9, 65.1), (97.3, 54.2), (23.6, 46.4),
    (28.3, 41.7), (35.2, 40.1), (42.5, 40.9), (49.3, 43.6), (62.3, 43.5), (69.1, 40.8),
    (76.4, 39.8), (83.4, 41.4), (88.3, 46.1), (55.9, 51.4), (55.9, 58.1), (56.0, 64.8),
    (55.9, 71.7), (48.0, 76.9), (51.8, 78.3), (56.0, 79.5), (60.2, 78.3), (64.1, 76.8),
    (31.8, 53.2), (36.0, 50.8), (41.0, 50.7), (45.5, 53.7), (40.7, 54.6), (35.9, 54.7),
    (66.5, 53.6), (70.8, 50.6), (75.8, 50.5), (80.1, 52.9), (76.0, 54.5), (71.1, 54.4),
    (40.3, 91.1), (45.9, 88.0), (51.7, 86.7), (56.1, 87.6), (60.3, 86.7), (66.3, 88.0),
    (72.1, 91.0), (66.5, 96.6), (60.8, 99.0), (56.1, 99.5), (51.4, 99.0), (45.7, 96.7),
    (42.7, 91.2), (51.7, 89.9), (56.1, 90.3), (60.4, 90.0), (69.6, 91.2), (60.5, 94.0),
    (56.1, 94.5), (51.6, 94.0),
)


@dataclass(frozen=True)
class DSLFIQAConfig:
    """All sizes of the model. Defaults = the authors' released config (``config.conf``, GFIQA)."""

    # input and crops
    input_size: int = 112            # faces the SDK delivers (ArcFace-aligned); other sizes are accepted
    face_size: int = 512             # faces are resized to this before cropping (the authors work on 512 faces)
    img_size: int = 384              # crop size = ViT input
    num_eval_crops: int = 5          # deterministic crops, see eval_crop_boxes (the authors: 20 random crops)
    # ViT
    patch_size: int = 16
    vit_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    feature_blocks: tuple[int, ...] = (6, 7, 8, 9)
    # MANIQA stages
    embed_dim: int = 768
    num_tab: int = 2
    swin_depths: tuple[int, ...] = (2, 2)
    swin_heads: tuple[int, ...] = (4, 4)
    window_size: int = 4
    dim_mlp: int = 768
    swin_scale: float = 0.8
    # degradation encoder (its last width is the decoder width)
    de_widths: tuple[int, ...] = (64, 64, 128, 128, 256, 256)
    de_strides: tuple[int, ...] = (1, 1, 2, 1, 2, 1)
    de_token_grid: tuple[int, int] = (8, 12)
    # degradation-query decoder
    decoder_depth: int = 3
    decoder_heads: int = 8
    decoder_mlp_ratio: float = 4.0
    # landmark guidance
    use_landmarks: bool = True
    num_landmarks: int = 68
    landmark_slots: int = 500        # length of the per-crop landmark index code (authors: num_landmark=500)
    landmark_freqs: int = 10         # NeRF frequencies 2^0 .. 2^(L-1) (authors: multires=10)
    landmark_hidden: int = 10500     # embed_mlp hidden width (authors: = its input width, 500 * 21)
    landmark_pe_pi: bool = False     # True: sin(2^k pi x) as in the NeRF paper; the released code omits pi
    # regularisation
    drop: float = 0.1
    drop_path: float = 0.1
    # keep the tensors the authors' checkpoint has but the forward never uses (ViT ImageNet head,
    # Swin ``downsample`` convs, decoder ``task_query``, ``testmlp``) so that ``IQA.pt`` loads key for key
    authors_layout: bool = True
    vit_num_classes: int = 1000

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"DSLFIQAConfig: {msg}")
        need(self.img_size % self.patch_size == 0, f"img_size {self.img_size} must be a multiple of patch_size")
        need(self.img_size <= self.face_size, f"crop img_size {self.img_size} exceeds face_size {self.face_size}")
        need(len(self.feature_blocks) > 0 and max(self.feature_blocks) < self.vit_depth
             and min(self.feature_blocks) >= 0, f"feature_blocks {self.feature_blocks} not in a depth-{self.vit_depth} ViT")
        need(len(self.swin_depths) == len(self.swin_heads), "swin_depths and swin_heads need one entry per layer")
        need(self.embed_dim % 2 == 0, "embed_dim must be even (stage 2 runs at embed_dim // 2)")
        for dim in (self.embed_dim, self.embed_dim // 2):
            need(all(dim % h == 0 for h in self.swin_heads), f"Swin dim {dim} not divisible by heads {self.swin_heads}")
        g = self.grid_size
        need(g % min(self.window_size, g) == 0, f"patch grid {g} is not a multiple of window_size {self.window_size}")
        need(self.de_widths[-1] % self.decoder_heads == 0, "decoder width (last de_widths) % decoder_heads != 0")
        need(self.landmark_slots >= self.num_landmarks,
             f"landmark_slots ({self.landmark_slots}) must be >= num_landmarks ({self.num_landmarks}) so no "
             "landmark is dropped from the code")
        need(self.num_eval_crops >= 1, "num_eval_crops must be >= 1")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Native input of :class:`DSLFIQA` (what ``fiqa_compile.models.profile`` feeds it)."""
        return (3, self.input_size, self.input_size)

    @property
    def vit_config(self) -> ViTConfig:
        return ViTConfig(img_size=self.img_size, patch_size=self.patch_size, embed_dim=self.vit_dim,
                         depth=self.vit_depth, num_heads=self.vit_heads,
                         num_classes=self.vit_num_classes if self.authors_layout else 0)

    @property
    def degradation_config(self) -> DegradationEncoderConfig:
        return DegradationEncoderConfig(widths=self.de_widths, strides=self.de_strides, token_grid=self.de_token_grid)

    @property
    def landmark_code_dim(self) -> int:
        return self.landmark_slots * (1 + 2 * self.landmark_freqs)


# ----------------------------------------------------------------------------------------------------------
# Crops
# ----------------------------------------------------------------------------------------------------------

Boxes = Sequence[tuple[int, int]]   # (top, left) of square crops


def eval_crop_boxes(face_size: int, crop_size: int, n: int) -> list[tuple[int, int]]:
    """Deterministic crop positions: 1 = centre; 5 = four corners + centre; k*k = an even k x k grid."""
    span = face_size - crop_size
    if span < 0:
        raise ValueError(f"crop {crop_size} is larger than the face {face_size}")
    c = span // 2
    if n == 1:
        return [(c, c)]
    if n == 5:
        return [(0, 0), (0, span), (c, c), (span, 0), (span, span)]
    k = round(n ** 0.5)
    if k * k != n:
        raise ValueError(f"num_eval_crops must be 1, 5 or a square (4, 9, 16, ...), got {n}")
    pos = [round(i * span / (k - 1)) for i in range(k)]
    return [(t, l) for t in pos for l in pos]


def random_crop_boxes(face_size: int, crop_size: int, n: int,
                      generator: torch.Generator | None = None) -> list[tuple[int, int]]:
    """Uniform random crop positions (training; the authors also test with 20 of these)."""
    span = face_size - crop_size
    if span < 0:
        raise ValueError(f"crop {crop_size} is larger than the face {face_size}")
    tl = torch.randint(0, span + 1, (n, 2), generator=generator)
    return [(int(t), int(l)) for t, l in tl]


def extract_crops(faces: torch.Tensor, boxes: Boxes, size: int) -> torch.Tensor:
    """(B, C, H, W) faces, K boxes -> (B * K, C, size, size), face-major (all crops of face 0 first)."""
    crops = [faces[:, :, t:t + size, l:l + size] for t, l in boxes]
    return torch.stack(crops, dim=1).flatten(0, 1)


# ----------------------------------------------------------------------------------------------------------
# Landmark guidance
# ----------------------------------------------------------------------------------------------------------

def landmarks_in_crops(landmarks: torch.Tensor, boxes: Boxes, crop_size: int) -> torch.Tensor:
    """(B, L, 2) landmarks (x, y) in face pixels -> (B, K, L) bool: inside crop k (bounds inclusive, as released)."""
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be (B, L, 2) (x, y) pixels, got {tuple(landmarks.shape)}")
    tl = torch.tensor([[t, l] for t, l in boxes], dtype=landmarks.dtype, device=landmarks.device)  # K, 2
    x, y = landmarks[:, None, :, 0], landmarks[:, None, :, 1]                                      # B, 1, L
    top, left = tl[None, :, 0, None], tl[None, :, 1, None]                                         # 1, K, 1
    return (top <= y) & (y <= top + crop_size) & (left <= x) & (x <= left + crop_size)


def landmark_index_code(inside: torch.Tensor, slots: int) -> torch.Tensor:
    """(..., L) membership -> (..., slots) code in [-1, 1]: the released DSL-FIQA landmark input.

    The sorted indices of the landmarks inside the crop, padded with L + 1 to ``slots`` values, then
    min-max scaled to [-1, 1] (no landmark inside: all -1).
    """
    n = inside.shape[-1]
    if slots < n:
        raise ValueError(f"{slots} slots cannot hold {n} landmark indices")
    pad = n + 1
    idx = torch.arange(n, device=inside.device).expand_as(inside)
    vals = torch.where(inside, idx, torch.full_like(idx, pad)).sort(dim=-1).values
    vals = torch.cat([vals, vals.new_full((*vals.shape[:-1], slots - n), pad)], dim=-1).float()
    lo, hi = vals.amin(-1, keepdim=True), vals.amax(-1, keepdim=True)
    return (vals - lo) / (hi - lo + 1e-6) * 2 - 1


def positional_encoding(x: torch.Tensor, num_freqs: int, include_input: bool = True,
                        use_pi: bool = False) -> torch.Tensor:
    """NeRF encoding, function-major as released: [x, sin(f0 x), cos(f0 x), sin(f1 x), ...], f_k = 2^k (* pi)."""
    parts = [x] if include_input else []
    for k in range(num_freqs):
        f = (2.0 ** k) * (torch.pi if use_pi else 1.0)
        parts += [torch.sin(x * f), torch.cos(x * f)]
    return torch.cat(parts, dim=-1)


# ----------------------------------------------------------------------------------------------------------
# MANIQA building blocks
# ----------------------------------------------------------------------------------------------------------

def _linspace(stop: float, n: int) -> list[float]:
    """Stochastic-depth rates 0 .. stop (plain Python, so models can be built on the meta device)."""
    return [stop * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class TABlock(nn.Module):
    """MANIQA's transposed attention block: attention among the C channels, each a length-N vector.

    The output keeps MANIQA's ``(attn @ v).transpose(1, 2).reshape(B, C, N)`` -- a reshape, not a transpose
    back -- because pretrained weights were fitted to exactly that mixing.
    """

    def __init__(self, num_tokens: int, drop: float) -> None:
        super().__init__()
        self.c_q = nn.Linear(num_tokens, num_tokens)
        self.c_k = nn.Linear(num_tokens, num_tokens)
        self.c_v = nn.Linear(num_tokens, num_tokens)
        self.norm_fact = num_tokens ** -0.5
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        attn = torch.softmax(self.c_q(x) @ self.c_k(x).transpose(-2, -1) * self.norm_fact, dim=-1)
        y = (attn @ self.c_v(x)).transpose(1, 2).reshape(b, c, n)
        return self.proj_drop(y) + x


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws * ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws^2, ws^2) index into a ((2 ws - 1)^2, heads) bias table for every query/key offset in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # 2, ws^2
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)                      # ws^2, ws^2, 2
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, ws^2, ws^2) additive mask for shifted windows: -100 between tokens from different image regions.

    After the cyclic shift by ``shift``, windows on the bottom/right border hold tokens that were not
    neighbours; the image is cut into 3 x 3 regions ([0, h-ws), [h-ws, h-shift), [h-shift, h), same in x)
    and attention is allowed only inside a region.
    """
    region = torch.zeros(1, h, w, 1)
    cuts = lambda n: (slice(0, n - ws), slice(n - ws, n - shift), slice(n - shift, n))  # noqa: E731
    label = 0
    for hs in cuts(h):
        for wsl in cuts(w):
            region[:, hs, wsl, :] = label
            label += 1
    win = window_partition(region, ws).squeeze(-1)            # nW, ws^2
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_windows: int, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw // num_windows, num_windows, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)                                    # each B, nW, heads, n, d
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.num_heads).permute(2, 0, 1)                    # heads, n, n
        add = bias if mask is None else bias[None] + mask[:, None]                 # (nW,) heads, n, n
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=add.to(q.dtype))
        return self.proj(y.permute(0, 1, 3, 2, 4).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """(Shifted-)window self-attention block; windows never exceed the grid (then nothing is shifted)."""

    def __init__(self, dim: int, resolution: int, num_heads: int, ws: int, shift: int, dim_mlp: int,
                 drop_path: float) -> None:
        super().__init__()
        if resolution <= ws:
            ws, shift = resolution, 0
        self.resolution, self.ws, self.shift = resolution, ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim_mlp)
        self.register_buffer("attn_mask", shifted_window_mask(resolution, resolution, ws, shift) if shift else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        r, ws, s = self.resolution, self.ws, self.shift
        y = self.norm1(x).view(b, r, r, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, ws), (r // ws) ** 2, self.attn_mask)
        y = window_reverse(y, ws, r, r)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, n, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinLayer(nn.Module):
    """MANIQA's ``BasicLayer``: Swin blocks (shift on every second one), then 3x3 conv + ReLU."""

    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, ws: int, dim_mlp: int,
                 drop_paths: Sequence[float]) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, ws, 0 if i % 2 == 0 else ws // 2, dim_mlp, drop_paths[i])
            for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        b, n, c = x.shape
        y = F.relu(self.conv(x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)))
        return y.flatten(2).transpose(1, 2)


class SwinStage(nn.Module):
    """MANIQA's ``SwinTransformer``: layers with a scaled residual, ``x = scale * layer(x) + x``."""

    def __init__(self, dim: int, cfg: DSLFIQAConfig) -> None:
        super().__init__()
        self.scale = cfg.swin_scale
        self.dropout = nn.Dropout(cfg.drop)
        dpr = _linspace(cfg.drop_path, sum(cfg.swin_depths))
        starts = [sum(cfg.swin_depths[:i]) for i in range(len(cfg.swin_depths))]
        self.layers = nn.ModuleList(
            SwinLayer(dim, cfg.grid_size, d, h, cfg.window_size, cfg.dim_mlp, dpr[s:s + d])
            for d, h, s in zip(cfg.swin_depths, cfg.swin_heads, starts))
        # MANIQA builds this conv but never calls it; kept only so that authors' checkpoints load key for key
        self.downsample = nn.Conv2d(dim, dim, 3, stride=2, padding=1) if cfg.authors_layout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = self.dropout(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.transpose(1, 2).reshape(b, c, h, w)


# ----------------------------------------------------------------------------------------------------------
# Degradation-query decoder
# ----------------------------------------------------------------------------------------------------------

def stretch_index(n_src: int, n_dst: int, device: torch.device | None = None) -> torch.Tensor:
    """Nearest-neighbour index map n_dst -> n_src (= F.interpolate(mode="nearest") along one axis)."""
    return torch.clamp((torch.arange(n_dst, device=device) * (n_src / n_dst)).floor().long(), max=n_src - 1)


class DecoderAttention(nn.Module):
    """Cross-attention: degradation tokens ask, image tokens answer.

    As released, the T query tokens are stretched by nearest-neighbour repetition to the N image tokens,
    so output token i is answered for query token floor(i * T / N) and added to image token i.
    """

    def __init__(self, dim: int, num_heads: int, drop: float, authors_layout: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        # created (and saved) by the authors' code but not used by its forward
        self.task_query = nn.Parameter(torch.randn(1, 1, dim)) if authors_layout else None

    def forward(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        q = self.q(queries).reshape(b, -1, h, d).permute(0, 2, 1, 3)
        q = q[:, :, stretch_index(q.shape[2], n, q.device)]
        k, v = self.kv(x).reshape(b, n, 2, h, d).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, n, c)))


class DWConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class DecoderMlp(nn.Module):
    """fc1 -> depth-wise 3x3 conv on the token grid -> GELU -> fc2 (the released ``Mlp`` with ``DWConv``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, authors_layout: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DecoderAttention(dim, num_heads, 0.0, authors_layout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DecoderMlp(dim, int(dim * mlp_ratio))
        self._init_weights()

    def _init_weights(self) -> None:
        """The released decoder's init (SegFormer-style); the other MANIQA parts keep PyTorch defaults."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, h: int, w: int, queries: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), queries))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


# ----------------------------------------------------------------------------------------------------------
# The networks
# ----------------------------------------------------------------------------------------------------------

def _mlp_head(dim: int, out_act: nn.Module, drop: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(drop), nn.Linear(dim, 1), out_act)


class DSLFIQANet(nn.Module):
    """The authors' IQA net (``IQA.pt``): crops + degradation tokens + landmark code -> one score per crop."""

    def __init__(self, cfg: DSLFIQAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, de_dim = cfg.num_tokens, cfg.de_widths[-1]
        self.vit = VisionTransformer(cfg.vit_config)
        self.tablock1 = nn.ModuleList(TABlock(n, cfg.drop) for _ in range(cfg.num_tab))
        self.conv1 = nn.Conv2d(cfg.vit_dim * len(cfg.feature_blocks), cfg.embed_dim, 1)
        self.swintransformer1 = SwinStage(cfg.embed_dim, cfg)
        self.tablock2 = nn.ModuleList(TABlock(n, cfg.drop) for _ in range(cfg.num_tab))
        self.conv2 = nn.Conv2d(cfg.embed_dim, cfg.embed_dim // 2, 1)
        self.swintransformer2 = SwinStage(cfg.embed_dim // 2, cfg)
        dpr = _linspace(cfg.drop_path, 16)  # as released: the first rates of a 16-block schedule
        self.decoder = nn.ModuleList(
            DecoderBlock(de_dim, cfg.decoder_heads, cfg.decoder_mlp_ratio, dpr[min(i, 15)], cfg.authors_layout)
            for i in range(cfg.decoder_depth))
        self.conv_decoder = nn.Conv2d(cfg.embed_dim // 2, de_dim, 1)
        # the released ``testmlp`` (add_mlp=False in every released config): never called, kept for loading
        self.testmlp = (nn.Sequential(nn.Linear(de_dim, de_dim), nn.ReLU(), nn.Dropout(cfg.drop),
                                      nn.Linear(de_dim, de_dim), nn.ReLU()) if cfg.authors_layout else None)
        if cfg.use_landmarks:
            self.embed_mlp = nn.Sequential(
                nn.Linear(cfg.landmark_code_dim, cfg.landmark_hidden), nn.ReLU(), nn.Dropout(cfg.drop),
                nn.Linear(cfg.landmark_hidden, n), nn.Sigmoid())
        else:
            self.embed_mlp = None
        head_dim = de_dim + (1 if cfg.use_landmarks else 0)
        self.fc_score = _mlp_head(head_dim, nn.ReLU(), cfg.drop)
        self.fc_weight = _mlp_head(head_dim, nn.Sigmoid(), cfg.drop)

    def token_features(self, x: torch.Tensor, degradation_tokens: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) crops, (B, T, C_de) queries -> (B, N, C_de) decoded tokens."""
        cfg = self.cfg
        if degradation_tokens.ndim != 3 or degradation_tokens.shape[0] != x.shape[0] \
                or degradation_tokens.shape[2] != cfg.de_widths[-1]:
            raise ValueError(f"degradation_tokens must be (B={x.shape[0]}, T, {cfg.de_widths[-1]}), "
                             f"got {tuple(degradation_tokens.shape)}")
        g = cfg.grid_size
        feats = self.vit.forward_intermediates(x, cfg.feature_blocks)
        y = torch.cat([f[:, 1:] for f in feats], dim=2).transpose(1, 2)     # B, 4C, N
        for tab in self.tablock1:
            y = tab(y)
        y = self.swintransformer1(self.conv1(y.reshape(y.shape[0], -1, g, g)))
        y = y.flatten(2)
        for tab in self.tablock2:
            y = tab(y)
        y = self.swintransformer2(self.conv2(y.reshape(y.shape[0], -1, g, g)))
        y = self.conv_decoder(y).flatten(2).transpose(1, 2)                # B, N, C_de
        for blk in self.decoder:
            y = blk(y, g, g, degradation_tokens)
        return y

    def forward(self, x: torch.Tensor, degradation_tokens: torch.Tensor,
                landmark_code: torch.Tensor | None = None) -> torch.Tensor:
        """Score per crop (B,): the weighted mean of per-token scores."""
        y = self.token_features(x, degradation_tokens)
        if self.embed_mlp is not None:
            if landmark_code is None or landmark_code.shape != (x.shape[0], self.cfg.landmark_slots):
                raise ValueError(f"this config uses landmarks: pass landmark_code of shape "
                                 f"({x.shape[0]}, {self.cfg.landmark_slots}) (see landmark_index_code), got "
                                 f"{None if landmark_code is None else tuple(landmark_code.shape)}")
            pe = positional_encoding(landmark_code, self.cfg.landmark_freqs, use_pi=self.cfg.landmark_pe_pi)
            y = torch.cat([y, self.embed_mlp(pe).unsqueeze(-1)], dim=-1)
        score, weight = self.fc_score(y).squeeze(-1), self.fc_weight(y).squeeze(-1)
        return (score * weight).sum(1) / weight.sum(1)


class DSLFIQA(nn.Module):
    """Whole model: aligned faces in [-1, 1] (+ optional 68 landmarks) -> one quality score per face.

    Faces are resized to ``face_size``, cut into crops of ``img_size`` (deterministic
    :func:`eval_crop_boxes` unless ``boxes`` are given, e.g. :func:`random_crop_boxes` for training), each crop
    is scored by the degradation encoder + IQA net with its landmark code, and the crop scores are averaged.
    """

    def __init__(self, cfg: DSLFIQAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.iqa = DSLFIQANet(cfg)
        self.degradation_encoder = DegradationEncoder(cfg.degradation_config)
        self.eval_boxes = eval_crop_boxes(cfg.face_size, cfg.img_size, cfg.num_eval_crops)
        self.register_buffer("mean_landmarks", torch.tensor(MEAN_LANDMARKS_68_ARCFACE112), persistent=False)

    def _face_landmarks(self, faces: torch.Tensor, landmarks: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = faces.shape
        if landmarks is None:
            if h != w or self.cfg.num_landmarks != 68:
                raise ValueError("landmarks=None uses the mean 68-point layout of square ArcFace-aligned faces; "
                                 f"got {h}x{w} faces and num_landmarks={self.cfg.num_landmarks}: pass landmarks")
            landmarks = (self.mean_landmarks * (h / 112.0)).expand(b, -1, -1)
        if landmarks.shape != (b, self.cfg.num_landmarks, 2):
            raise ValueError(f"landmarks must be (B={b}, {self.cfg.num_landmarks}, 2) (x, y) in input pixels, "
                             f"got {tuple(landmarks.shape)}")
        scale = torch.tensor([self.cfg.face_size / w, self.cfg.face_size / h], dtype=faces.dtype, device=faces.device)
        return landmarks.to(faces.dtype) * scale

    def forward(self, faces: torch.Tensor, landmarks: torch.Tensor | None = None,
                boxes: Boxes | None = None) -> torch.Tensor:
        """(B, 3, H, W) faces in [-1, 1], landmarks (B, 68, 2) in the same pixels (None: the mean
        ArcFace layout, which alignment makes a close guess) -> (B,) scores."""
        if faces.ndim != 4 or faces.shape[1] != 3:
            raise ValueError(f"faces must be (B, 3, H, W) RGB in [-1, 1], got {tuple(faces.shape)}")
        cfg = self.cfg
        lm = self._face_landmarks(faces, landmarks) if cfg.use_landmarks else None
        fs = cfg.face_size
        if tuple(faces.shape[-2:]) != (fs, fs):
            faces = F.interpolate(faces, size=(fs, fs), mode="bilinear", align_corners=False,
                                  antialias=max(faces.shape[-2:]) > fs)
        boxes = self.eval_boxes if boxes is None else [(int(t), int(l)) for t, l in boxes]
        crops = extract_crops(faces, boxes, cfg.img_size)
        code = None
        if lm is not None:
            code = landmark_index_code(landmarks_in_crops(lm, boxes, cfg.img_size), cfg.landmark_slots)
            code = code.flatten(0, 1)
        tokens = self.degradation_encoder(crops).tokens
        return self.iqa(crops, tokens, code).view(faces.shape[0], len(boxes)).mean(dim=1)


# ----------------------------------------------------------------------------------------------------------
# Authors' checkpoints
# ----------------------------------------------------------------------------------------------------------

IQA_MODULES = ("vit", "tablock1", "conv1", "swintransformer1", "tablock2", "conv2", "swintransformer2",
               "decoder", "conv_decoder", "testmlp", "embed_mlp", "fc_score", "fc_weight")
DE_MODULES = ("E", "mlp")
# tensors the released forward never reads; a model built with authors_layout=False drops them on load
_UNUSED_BY_FORWARD = re.compile(r"^(vit\.head\.|swintransformer[12]\.downsample\.|decoder\.\d+\.attn\.task_query$"
                                r"|testmlp\.)")


@dataclass
class DSLLoadReport(LoadReport):
    parts_loaded: tuple[str, ...] = field(default=())   # "iqa" (IQA.pt keys) and/or "degradation" (DE.pt keys)


def _part_key_map(own: set[str]):
    """Authors' names equal ours inside each part; unused-by-forward tensors are dropped when we lack them."""
    def key_map(k: str) -> str | None:
        if k not in own and _UNUSED_BY_FORWARD.match(k):
            return None
        return k
    return key_map


def authors_state_dicts(model: DSLFIQA) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our model as the authors' two files: (``IQA.pt`` state_dict, ``DE.pt`` state_dict)."""
    return dict(model.iqa.state_dict()), dict(model.degradation_encoder.state_dict())


StateSource = str | Path | Mapping[str, torch.Tensor]


def load_dsl_fiqa_checkpoint(path_or_state_dict: StateSource | Sequence[StateSource],
                             config: DSLFIQAConfig | None = None,
                             strict: bool = True) -> tuple[DSLFIQA, DSLLoadReport]:
    """Build DSL-FIQA and load the authors' ``IQA.pt`` and/or ``DE.pt`` (paths or state_dicts, or a list of them).

    Keys are split by their first name: ``E.*``/``mlp.*`` -> degradation encoder, ``vit.*``, ``tablock1.*``, ...
    -> IQA net. A part that is present must match completely (``strict``); a part that is absent keeps its
    initial weights and is not listed in ``report.parts_loaded``. Mismatches raise naming the keys.
    """
    cfg = config if config is not None else get_config("dsl_fiqa")
    sources = list(path_or_state_dict) if isinstance(path_or_state_dict, (list, tuple)) else [path_or_state_dict]
    merged: dict[str, torch.Tensor] = {}
    for src in sources:
        sd = read_state_dict(src) if isinstance(src, (str, Path)) else dict(src)
        clash = sorted(set(sd) & set(merged))
        if clash:
            raise CheckpointMismatch(f"the checkpoints overlap in {len(clash)} keys (e.g. {clash[:5]}); "
                                     "pass one IQA.pt and one DE.pt")
        merged.update(sd)
    parts: dict[str, dict[str, torch.Tensor]] = {"iqa": {}, "degradation": {}}
    unknown: list[str] = []
    for k, v in merged.items():
        head = k.split(".", 1)[0]
        if head in DE_MODULES:
            parts["degradation"][k] = v
        elif head in IQA_MODULES:
            parts["iqa"][k] = v
        else:
            unknown.append(k)
    if not parts["iqa"] and not parts["degradation"]:
        raise CheckpointMismatch(f"no DSL-FIQA keys found (expected {IQA_MODULES} or {DE_MODULES} prefixes); "
                                 f"first keys: {list(merged)[:8]}")
    model = DSLFIQA(cfg)
    report = DSLLoadReport(unexpected=list(unknown))
    loaded = []
    for name, module in (("iqa", model.iqa), ("degradation", model.degradation_encoder)):
        if not parts[name]:
            continue
        r = load_foreign_state_dict(module, parts[name], _part_key_map(set(module.state_dict())), strict=False)
        report.missing += r.missing
        report.unexpected += r.unexpected
        report.shape_mismatch += r.shape_mismatch
        report.ignored += r.ignored
        loaded.append(name)
    report.parts_loaded = tuple(loaded)
    if strict and not report.ok:
        raise CheckpointMismatch(f"checkpoint does not fit DSL-FIQA ({', '.join(loaded)} part): {report.describe()}. "
                                 "Pass the config the checkpoint was trained with, or strict=False to load the rest.")
    return model, report


# ----------------------------------------------------------------------------------------------------------
# Registered configs
# ----------------------------------------------------------------------------------------------------------

PAPER = DSLFIQAConfig()

# CPU-trainable variant for distillation experiments on 112x112 faces: 112 -> 144, five 128 crops, a
# 4-block 96-d ViT/16 whose blocks 1-3 feed the head (8x8 tokens, 4x4 windows), one TA/Swin block per stage,
# a slim stride-2 degradation encoder and a 68-slot landmark code.
TINY = DSLFIQAConfig(
    face_size=144, img_size=128, num_eval_crops=5, patch_size=16,
    vit_dim=96, vit_depth=4, vit_heads=3, feature_blocks=(1, 2, 3),
    embed_dim=96, num_tab=1, swin_depths=(1,), swin_heads=(3,), window_size=4, dim_mlp=192,
    de_widths=(16, 16, 32, 32, 32, 32), de_strides=(2, 2, 1, 2, 1, 1), de_token_grid=(4, 4),
    decoder_depth=1, decoder_heads=4, decoder_mlp_ratio=2.0,
    landmark_slots=68, landmark_freqs=6, landmark_hidden=128,
    authors_layout=False,
)

register_model("dsl_fiqa", PAPER, DSLFIQA)
register_model("dsl_fiqa_tiny", TINY, DSLFIQA)
