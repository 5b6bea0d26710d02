"""ViT-FIQA teacher (Atzori, Boutros, Damer, ICCVW 2025): a face-recognition ViT with a learnable quality token.

The architecture follows insightface ``arcface_torch/backbones/vit.py`` as extended by the authors'
``backbones/vit_qs.py``: 112x112 aligned face -> 9x9 patches (12x12 = 144 tokens; the conv ignores the last
4 pixel rows/columns exactly as the original does) -> a quality token ``qs_token`` is prepended (145 tokens) ->
pre-norm transformer blocks (ReLU6 MLP, no qkv bias) -> final LayerNorm -> two heads:

* ``feature``: Linear(tokens*dim -> dim, no bias), BN(eps 2e-5), Linear(dim -> 512, no bias), BN(eps 2e-5):
  the face-recognition embedding, trained with a margin-penalty softmax (``margin.py``).
* ``head_qs``: BN(eps 2e-5), Linear(-> 1, no bias): the quality score, regressed onto CR-FIQA's certainty ratio.

The two ``mode`` s are the authors' ``--mode`` switch and differ in what the heads read (faithful to their code):

* ``"token"`` -- ``feature`` reads the 144 patch tokens; ``head_qs`` reads the refined quality token.
* ``"full"``  -- ``feature`` reads all 145 tokens (``feature.0.weight`` is [dim, 145*dim]); ``head_qs`` then reads
  the *embedding* (the authors' ``forward`` applies ``head_qs`` to the ``feature`` output in this mode).

During training (``mask_ratio > 0``) a random ``mask_ratio`` share of the tokens -- the quality token included,
as in the authors' code -- is dropped before the blocks and replaced by ``mask_token`` after the final norm.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Mapping, NamedTuple

import torch
from torch import nn

from fiqa_compile.models.checkpoints import CheckpointMismatch, LoadReport, load_foreign_state_dict, read_state_dict
from fiqa_compile.models.layers import DropPath, Mlp
from fiqa_compile.models.registry import register_model

Mode = Literal["token", "full"]
_BN_EPS = 2e-5  # arcface_torch's BatchNorm1d eps in the embedding and quality heads


@dataclass(frozen=True)
class ViTFIQAConfig:
    """Hyper-parameters of one ViT-FIQA variant; everything a state_dict cannot tell is here."""

    img_size: int = 112
    patch_size: int = 9
    in_chans: int = 3
    dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    embedding_dim: int = 512
    mode: Mode = "full"
    mask_ratio: float = 0.1
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in ("token", "full"):
            raise ValueError(f"mode must be 'token' or 'full', got {self.mode!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if not 0 < self.patch_size <= self.img_size:
            raise ValueError(f"patch_size={self.patch_size} must be in 1..img_size={self.img_size}")
        if self.depth < 1 or self.dim < 1 or self.embedding_dim < 1:
            raise ValueError("depth, dim and embedding_dim must be positive")
        for name in ("mask_ratio", "drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_tokens(self) -> int:
        """Patch tokens plus the quality token."""
        return self.num_patches + 1

    @property
    def feature_in(self) -> int:
        return (self.num_tokens if self.mode == "full" else self.num_patches) * self.dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Native input (C, H, W): an ArcFace-aligned face, see ``fiqa_sdk.preprocess``."""
        return (self.in_chans, self.img_size, self.img_size)


class ViTFIQAOutput(NamedTuple):
    """``embedding``: (B, embedding_dim), not L2-normalised (normalise before cosine matching).
    ``quality``: (B,), the regressed utility score (higher = more useful for recognition)."""

    embedding: torch.Tensor
    quality: torch.Tensor


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTFIQAConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)


class Attention(nn.Module):
    """Multi-head self-attention written out with matmuls (exportable to ONNX/TFLite, counted by FlopCounterMode)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm, as the 'ln' option of arcface_torch)."""

    def __init__(self, cfg: ViTFIQAConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.drop_rate, act=nn.ReLU6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTFIQA(nn.Module):
    """ViT-FIQA: ``forward(images) -> ViTFIQAOutput(embedding, quality)``; see the module docstring."""

    def __init__(self, cfg: ViTFIQAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.qs_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # stochastic-depth decay rule (linspace 0..rate); plain Python so the model also builds on the meta device
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim)
        # As in the authors' code the mask token only exists when masking is on (a checkpoint tells which).
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.mask_ratio > 0 else None
        self.feature = nn.Sequential(
            nn.Linear(cfg.feature_in, cfg.dim, bias=False),
            nn.BatchNorm1d(cfg.dim, eps=_BN_EPS),
            nn.Linear(cfg.dim, cfg.embedding_dim, bias=False),
            nn.BatchNorm1d(cfg.embedding_dim, eps=_BN_EPS),
        )
        qs_in = cfg.embedding_dim if cfg.mode == "full" else cfg.dim
        self.head_qs = nn.Sequential(nn.BatchNorm1d(qs_in, eps=_BN_EPS), nn.Linear(qs_in, 1, bias=False))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.qs_token, std=1e-6)  # the authors' final init of the quality token
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimiser should not decay (the authors' list)."""
        return {"pos_embed", "qs_token"}

    def _random_masking(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep a random ``1 - mask_ratio`` share of the tokens per sample (MAE-style argsort of noise)."""
        b, n, d = x.shape
        keep = int(n * (1 - self.cfg.mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        return kept, ids_restore

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, 1 + num_patches, dim); token 0 is the quality token."""
        cfg = self.cfg
        if x.ndim != 4 or tuple(x.shape[1:]) != cfg.input_shape:
            raise ValueError(f"ViT-FIQA expects (B, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}) aligned faces "
                             f"(fiqa_sdk.preprocess), got {tuple(x.shape)}")
        x = self.patch_embed(x)
        x = torch.cat((self.qs_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = self.pos_drop(x)
        masking = self.training and self.mask_token is not None
        if masking:
            x, ids_restore = self._random_masking(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if masking:
            fill = self.mask_token.expand(x.shape[0], ids_restore.shape[1] - x.shape[1], -1)
            x = torch.cat((x, fill), dim=1)
            x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        return x

    def forward(self, x: torch.Tensor) -> ViTFIQAOutput:
        tokens = self.forward_tokens(x)
        b = tokens.shape[0]
        if self.cfg.mode == "full":
            emb = self.feature(tokens.reshape(b, -1))
            quality = self.head_qs(emb)
        else:
            emb = self.feature(tokens[:, 1:].reshape(b, -1))
            quality = self.head_qs(tokens[:, 0])
        return ViTFIQAOutput(emb, quality.squeeze(-1))


# ----------------------------------------------------------------------------------------------- registry

VIT_FIQA_S = ViTFIQAConfig()  # the paper's ViT-FIQA-S (arcface_torch "vit_s" geometry, patch 9, full mode)
VIT_FIQA_B = replace(VIT_FIQA_S, depth=24)
# Small, trainable on one GPU; patch 14 (8x8 grid) keeps the flattened-token embedding head small.
VIT_FIQA_TINY = ViTFIQAConfig(patch_size=14, dim=192, depth=6, num_heads=6, mode="token", drop_path_rate=0.05)

register_model("vit_fiqa_s", VIT_FIQA_S, ViTFIQA)
register_model("vit_fiqa_b", VIT_FIQA_B, ViTFIQA)
register_model("vit_fiqa_tiny", VIT_FIQA_TINY, ViTFIQA)
# The SDK's embedded utility teacher: small enough to train on a 2-core CPU in under an hour and to commit
# (about 2.3M parameters, 4.6 MB in fp16), same architecture and heads as the paper's.
VIT_FIQA_MINI = ViTFIQAConfig(patch_size=14, dim=128, depth=6, num_heads=4, mode="token", drop_path_rate=0.05)
register_model("vit_fiqa_mini", VIT_FIQA_MINI, ViTFIQA)


# ----------------------------------------------------------------------------------------------- checkpoints

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# (authors' key pattern, our key template). Our module names were chosen equal to the authors', so each rule maps
# a key family onto itself -- the list is still the contract: keys no rule names are never loaded silently.
AUTHORS_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"pos_embed", "pos_embed"),
    (r"qs_token", "qs_token"),
    (r"mask_token", "mask_token"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"blocks.\1.mlp.fc\2.\3"),
    (r"norm\.(weight|bias)", r"norm.\1"),
    (r"feature\.([02])\.weight", r"feature.\1.weight"),
    (r"feature\.([13])\." + _BN, r"feature.\1.\2"),
    (r"head_qs\.0\." + _BN, r"head_qs.0.\1"),
    (r"head_qs\.1\.weight", "head_qs.1.weight"),
)
_RULES = tuple((re.compile(p), t) for p, t in AUTHORS_KEY_RULES)


def authors_key_to_ours(key: str) -> str:
    """Map one authors' key to our module key. A key no rule covers is returned as is: no module has that
    name, so :func:`load_foreign_state_dict` reports it as unexpected instead of loading it."""
    key = key[7:] if key.startswith("module.") else key  # DataParallel/DDP prefix
    for pattern, template in _RULES:
        if pattern.fullmatch(key):
            return pattern.sub(template, key)
    return key


def to_authors_state_dict(model: ViTFIQA) -> dict[str, torch.Tensor]:
    """Our state_dict under the authors' key names, e.g. to hand weights back to their code.

    Our names equal theirs, so this checks that every key is covered by a rule (i.e. loads back) and copies.
    """
    out = {}
    for key, value in model.state_dict().items():
        if not any(p.fullmatch(key) for p, _ in _RULES):
            raise RuntimeError(f"model key {key!r} has no rule in AUTHORS_KEY_RULES; add one")
        out[key] = value
    return out


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointMismatch(f"not a ViT-FIQA checkpoint: key {key!r} is missing (it has {len(sd)} keys, "
                                 f"e.g. {sorted(sd)[:5]}). A CR-FIQA-mode ViT (no quality token) is not supported.")
    return sd[key]


def infer_config(state_dict: Mapping[str, torch.Tensor], num_heads: int = 8,
                 img_size: int = 112) -> ViTFIQAConfig:
    """Read dim/depth/patch/mlp/mode/embedding size off an authors'-layout state_dict.

    ``num_heads`` leaves no trace in the weights: the default 8 is the paper's (every 512-d ViT-FIQA), pass another
    value for other checkpoints. ``img_size`` is kept when it yields the checkpoint's grid (112 with patch 9 -> 12).
    """
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    pos = _need(sd, "pos_embed")
    proj = _need(sd, "patch_embed.proj.weight")
    _need(sd, "qs_token")
    feat0 = _need(sd, "feature.0.weight")
    feat2 = _need(sd, "feature.2.weight")
    fc1 = _need(sd, "blocks.0.mlp.fc1.weight")
    num_tokens, dim = int(pos.shape[1]), int(pos.shape[2])
    grid = math.isqrt(num_tokens - 1)
    if grid * grid != num_tokens - 1:
        raise CheckpointMismatch(f"pos_embed {tuple(pos.shape)}: {num_tokens} - 1 tokens is not a square patch grid")
    patch = int(proj.shape[2])
    if img_size // patch != grid:
        img_size = grid * patch
    depths = {int(m.group(1)) for k in sd if (m := re.fullmatch(r"blocks\.(\d+)\.norm1\.weight", k))}
    if depths != set(range(len(depths))):
        raise CheckpointMismatch(f"block indices are not contiguous from 0: {sorted(depths)}")
    if feat0.shape[1] == num_tokens * dim:
        mode: Mode = "full"
    elif feat0.shape[1] == (num_tokens - 1) * dim:
        mode = "token"
    else:
        raise CheckpointMismatch(f"feature.0.weight {tuple(feat0.shape)} fits neither mode: expected in_features "
                                 f"{num_tokens}*{dim}={num_tokens * dim} ('full') or "
                                 f"{num_tokens - 1}*{dim}={(num_tokens - 1) * dim} ('token')")
    try:
        return ViTFIQAConfig(img_size=img_size, patch_size=patch, in_chans=int(proj.shape[1]), dim=dim,
                             depth=len(depths), num_heads=num_heads, mlp_ratio=fc1.shape[0] / dim,
                             qkv_bias="blocks.0.attn.qkv.bias" in sd, embedding_dim=int(feat2.shape[0]), mode=mode,
                             mask_ratio=0.1 if "mask_token" in sd else 0.0)
    except ValueError as e:
        raise CheckpointMismatch(f"checkpoint implies an invalid config: {e} (num_heads is not stored in the "
                                 "weights: pass num_heads= or config=)") from e


_STRUCTURAL = ("img_size", "patch_size", "in_chans", "dim", "depth", "mlp_ratio", "qkv_bias", "embedding_dim", "mode")


def load_vit_fiqa_checkpoint(path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
                             config: ViTFIQAConfig | None = None, strict: bool = True,
                             num_heads: int | None = None) -> tuple[ViTFIQA, LoadReport]:
    """Build a ViT-FIQA matching an authors' checkpoint and load it through :data:`AUTHORS_KEY_RULES`.

    Without ``config`` the architecture is inferred (:func:`infer_config`); with one, the checkpoint must agree
    with it (a disagreement raises :class:`CheckpointMismatch` naming the field and the key that shows it).
    Returns the model in eval mode and the :class:`LoadReport`. Files are read with ``weights_only=True``.
    """
    sd = (read_state_dict(path_or_state_dict) if isinstance(path_or_state_dict, (str, Path))
          else dict(path_or_state_dict))
    if config is not None and num_heads is not None and num_heads != config.num_heads:
        raise ValueError(f"num_heads={num_heads} contradicts config.num_heads={config.num_heads}; give one")
    heads = num_heads if num_heads is not None else (config.num_heads if config is not None else 8)
    if config is None:
        config = infer_config(sd, num_heads=heads)
    elif strict:
        found = infer_config(sd, num_heads=heads, img_size=config.img_size)
        diff = [f"{f}: checkpoint {getattr(found, f)!r} vs config {getattr(config, f)!r}"
                for f in _STRUCTURAL if getattr(found, f) != getattr(config, f)]
        if diff:
            raise CheckpointMismatch("checkpoint does not match the config (read from pos_embed, "
                                     "patch_embed.proj.weight, blocks.*, feature.0/2.weight): " + "; ".join(diff))
    model = ViTFIQA(config)
    report = load_foreign_state_dict(model, sd, authors_key_to_ours, strict=strict)
    return model.eval(), report
