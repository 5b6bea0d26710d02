"""DSL-FIQA's degradation encoder and our Dual-Set degradation representation Learning (DSL) objective.

The encoder is DASR's (Wang et al., CVPR 2021) as DSL-FIQA ships it: six 3x3 conv + BatchNorm +
LeakyReLU(0.1) layers (64, 64, 128, 128, 256, 256 channels; stride 2 at the 3rd and 5th), parameter names
``E.*`` and an MLP projection head ``mlp.*`` (Linear-LeakyReLU-Linear). The released DSL-FIQA code pools the
feature map to an 8x12 grid and hands those 96 vectors to the IQA net as the *queries* of its decoder; it
also applies ``mlp`` to each of them for the contrastive loss.

The DSL training objective was never released. :class:`DualSetDegradationLoss` is our reading of the
paper (see docs/dsl_fiqa.md): InfoNCE on a synthetic set (same degradation on two different faces =
positive, so content cannot explain the match), InfoNCE on a real set (two crops of one real image =
positive), and a bidirectional cross-set term through soft proximity mapping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DegradationEncoderConfig:
    widths: tuple[int, ...] = (64, 64, 128, 128, 256, 256)
    strides: tuple[int, ...] = (1, 1, 2, 1, 2, 1)
    token_grid: tuple[int, int] = (8, 12)   # the released code's AdaptiveAvgPool2d((8, 12)): 96 query tokens
    in_chans: int = 3

    def __post_init__(self) -> None:
        if not self.widths or len(self.widths) != len(self.strides):
            raise ValueError(f"degradation encoder widths {self.widths} and strides {self.strides} must be "
                             "non-empty and of equal length (one stride per conv)")
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"degradation encoder strides must be 1 or 2, got {self.strides}")
        if len(self.token_grid) != 2 or min(self.token_grid) < 1:
            raise ValueError(f"token_grid must be two positive ints (rows, cols), got {self.token_grid}")

    @property
    def dim(self) -> int:
        return self.widths[-1]

    @property
    def num_tokens(self) -> int:
        return self.token_grid[0] * self.token_grid[1]


class DegradationFeatures(NamedTuple):
    tokens: torch.Tensor       # (B, T, C) pooled grid of the encoder's feature map: the decoder's queries
    projection: torch.Tensor   # (B, C) mlp(global average of the feature map), for the contrastive loss


class DegradationEncoder(nn.Module):
    """Conv encoder whose pooled features describe *how* an image is degraded, not *what* it shows."""

    def __init__(self, cfg: DegradationEncoderConfig = DegradationEncoderConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = cfg.in_chans
        for c_out, stride in zip(cfg.widths, cfg.strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.1, inplace=True)]
            c_in = c_out
        self.E = nn.Sequential(*layers)   # indices 3i (conv) and 3i+1 (BN) match the authors' DE.pt keys
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.LeakyReLU(0.1, inplace=True),
                                 nn.Linear(cfg.dim, cfg.dim))

    def forward(self, x: torch.Tensor) -> DegradationFeatures:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"degradation encoder expects (B, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}")
        fea = self.E(x)
        tokens = F.adaptive_avg_pool2d(fea, self.cfg.token_grid).flatten(2).transpose(1, 2)
        return DegradationFeatures(tokens=tokens, projection=self.mlp(fea.mean(dim=(2, 3))))


# --------------------------------------------------------------------------------------------------------
# The dual-set objective
# --------------------------------------------------------------------------------------------------------

class DSLLossTerms(NamedTuple):
    total: torch.Tensor
    synthetic: torch.Tensor
    real: torch.Tensor
    cross: torch.Tensor


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
             allowed: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Mean over anchors of -log softmax(pos) against the allowed negatives (unit vectors, cosine logits).

    ``allowed`` (A, M) masks out negatives that share the anchor's degradation (false negatives).
    """
    pos = (anchor * positive).sum(-1, keepdim=True)
    neg = anchor @ negatives.T
    if allowed is not None:
        neg = neg.masked_fill(~allowed, float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


def soft_proximity_map(queries: torch.Tensor, support: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft nearest neighbour of each query in ``support``: softmax(-||q - s||^2 / T)-weighted mean, re-normalised.

    This is how a synthetic degradation finds "its" real counterparts (and vice versa) without labels.
    """
    w = torch.softmax(-torch.cdist(queries, support).pow(2) / temperature, dim=1)
    return F.normalize(w @ support, dim=1)


class DualSetDegradationLoss(nn.Module):
    """Contrastive pre-training objective of the degradation encoder on a synthetic and a real set.

    Inputs are projections (any scale; they are L2-normalised here):

    * ``syn_a[i]``, ``syn_b[i]``: the SAME synthetic degradation (type and severity, id ``syn_labels[i]``)
      applied to two DIFFERENT clean faces. Positive pair; since the faces differ, only the degradation
      can make them similar, which decouples the representation from identity/content. Every other
      synthetic sample with a different degradation id is a negative -- including, with
      :func:`synthetic_pairs`, the same face under another degradation (the hard, content-matched negative).
      Samples sharing a degradation id are never used as negatives.
    * ``real_a[j]``, ``real_b[j]``: two random crops of one real low-quality face (unlabelled; one photo
      is assumed to carry one degradation, as in DASR). Positive pair; other real images are negatives.
    * Cross-set, bidirectional (the "dual-set" part): each synthetic sample is mapped onto the real set by
      :func:`soft_proximity_map` and must be closer to the proxy of its own pair partner than to the proxies
      of other degradations; symmetrically each real crop must match the synthetic proxy of its other crop.
      This aligns the two sets' degradation clusters, so that real degradations land next to the
      synthetic ones they resemble instead of forming a separate domain.

    ``total = w_syn * L_syn + w_real * L_real + w_cross * (L_syn->real + L_real->syn) / 2``.
    With ``queue_size > 0`` each set keeps a MoCo-style FIFO of past (detached) projections as extra
    negatives; synthetic queue entries keep their degradation id so same-degradation entries stay masked.
    """

    _EMPTY = -2     # queue slot not yet filled
    _UNKNOWN = -1   # label of real samples and of synthetic samples given without labels: always a negative

    def __init__(self, dim: int, temperature: float = 0.2, proximity_temperature: float = 0.1,
                 queue_size: int = 0, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        if temperature <= 0 or proximity_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self.dim = dim
        self.temperature = temperature
        self.proximity_temperature = proximity_temperature
        self.queue_size = queue_size
        self.weights = tuple(float(w) for w in weights)
        for name in ("syn", "real"):
            self.register_buffer(f"{name}_queue", torch.zeros(queue_size, dim))
            self.register_buffer(f"{name}_queue_labels", torch.full((queue_size,), self._EMPTY, dtype=torch.long))
            self.register_buffer(f"{name}_queue_ptr", torch.zeros((), dtype=torch.long))

    # -- queue ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _enqueue(self, name: str, z: torch.Tensor, labels: torch.Tensor) -> None:
        if self.queue_size == 0:
            return
        queue, qlab, ptr = (getattr(self, f"{name}_queue"), getattr(self, f"{name}_queue_labels"),
                            getattr(self, f"{name}_queue_ptr"))
        z, labels = z[-self.queue_size:], labels[-self.queue_size:]
        idx = (ptr + torch.arange(len(z), device=z.device)) % self.queue_size
        queue[idx] = z.detach().to(queue.dtype)
        qlab[idx] = labels
        ptr.copy_((ptr + len(z)) % self.queue_size)

    def _queue(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"{name}_queue"), getattr(self, f"{name}_queue_labels")

    # -- terms ---------------------------------------------------------------------------------------
    def _within_set(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, name: str) -> torch.Tensor:
        """Symmetric InfoNCE: a[i] <-> b[i] positive, in-batch samples of other degradations (+ queue) negative."""
        anchors, positives = torch.cat([a, b]), torch.cat([b, a])
        lab = torch.cat([labels, labels])
        cands, allowed = anchors, lab[:, None] != lab[None, :]
        queue, qlab = self._queue(name)
        if self.queue_size:
            # in-batch labels are >= 0, so UNKNOWN (-1) queue entries always pass the second test
            q_ok = (qlab[None, :] != self._EMPTY) & (qlab[None, :] != lab[:, None])
            cands, allowed = torch.cat([cands, queue]), torch.cat([allowed, q_ok], dim=1)
        return info_nce(anchors, positives, cands, allowed, self.temperature)

    def _cross(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Anchor a[i]; positive = proxy of b[i] in the other set; negatives = proxies of other degradations."""
        proxies = soft_proximity_map(b, support, self.proximity_temperature)
        return info_nce(a, proxies, proxies, labels[:, None] != labels[None, :], self.temperature)

    def forward(self, syn_a: torch.Tensor, syn_b: torch.Tensor, real_a: torch.Tensor, real_b: torch.Tensor,
                syn_labels: torch.Tensor | None = None) -> DSLLossTerms:
        for name, t in (("syn_a", syn_a), ("syn_b", syn_b), ("real_a", real_a), ("real_b", real_b)):
            if t.ndim != 2 or t.shape[1] != self.dim:
                raise ValueError(f"{name} must be (N, {self.dim}) projections, got {tuple(t.shape)}")
        if syn_a.shape != syn_b.shape or real_a.shape != real_b.shape:
            raise ValueError("syn_a/syn_b and real_a/real_b must come in aligned pairs of equal shape")
        if len(syn_a) < 2 or len(real_a) < 2:
            raise ValueError("each set needs at least 2 samples: a contrastive loss needs negatives")
        dev = syn_a.device
        known = syn_labels is not None
        if known:
            syn_labels = torch.as_tensor(syn_labels, device=dev).long()
            if syn_labels.shape != (len(syn_a),) or bool((syn_labels < 0).any()):
                raise ValueError(f"syn_labels must be ({len(syn_a)},) non-negative degradation ids")
            if len(torch.unique(syn_labels)) < 2:
                raise ValueError("all synthetic pairs share one degradation id: there are no negatives; "
                                 "sample at least two different degradations per batch")
            syn_lab = syn_labels
        else:
            syn_lab = torch.arange(len(syn_a), device=dev)   # every pair its own degradation
        real_lab = torch.arange(len(real_a), device=dev)
        sa, sb, ra, rb = (F.normalize(t, dim=1) for t in (syn_a, syn_b, real_a, real_b))

        l_syn = self._within_set(sa, sb, syn_lab, "syn")
        l_real = self._within_set(ra, rb, real_lab, "real")
        l_cross = 0.5 * (self._cross(sa, sb, syn_lab, rb) + self._cross(ra, rb, real_lab, sb))
        w_syn, w_real, w_cross = self.weights
        total = w_syn * l_syn + w_real * l_real + w_cross * l_cross
        if self.training:
            self._enqueue("syn", sb, syn_lab if known else torch.full_like(syn_lab, self._UNKNOWN))
            self._enqueue("real", rb, torch.full_like(real_lab, self._UNKNOWN))
        return DSLLossTerms(total=total, synthetic=l_syn.detach(), real=l_real.detach(), cross=l_cross.detach())


# --------------------------------------------------------------------------------------------------------
# Batch construction for the two sets
# --------------------------------------------------------------------------------------------------------

Degradation = Callable[[torch.Tensor], torch.Tensor]   # (3, H, W) -> (3, H, W), fixed parameters


def synthetic_pairs(clean: torch.Tensor, degradations: Sequence[Degradation],
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic set: ``a[i] = d(clean[i])``, ``b[i] = d(clean[i+1])`` with ``d = degradations[labels[i]]``.

    Pair i shares a degradation but not a face. Because ``b[i]`` shows the face of ``a[i+1]``, each batch
    also contains the same face under two degradations (a content-matched negative) whenever
    ``labels[i] != labels[i+1]``.
    """
    if clean.ndim != 4 or len(clean) < 2:
        raise ValueError(f"clean must be (N>=2, C, H, W), got {tuple(clean.shape)}")
    labels = torch.as_tensor(labels).long()
    if labels.shape != (len(clean),) or int(labels.min()) < 0 or int(labels.max()) >= len(degradations):
        raise ValueError(f"labels must be ({len(clean)},) indices into {len(degradations)} degradations")
    nxt = torch.roll(torch.arange(len(clean)), -1)
    a = torch.stack([degradations[int(k)](clean[i]) for i, k in enumerate(labels)])
    b = torch.stack([degradations[int(k)](clean[int(j)]) for j, k in zip(nxt, labels)])
    return a, b


def two_random_crops(images: torch.Tensor, size: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real set: two independent random ``size`` x ``size`` crops of each image (same photo, same degradation)."""
    if images.ndim != 4 or min(images.shape[-2:]) < size:
        raise ValueError(f"images must be (N, C, H, W) with H, W >= {size}, got {tuple(images.shape)}")
    h, w = images.shape[-2:]

    def crop() -> torch.Tensor:
        tops = torch.randint(0, h - size + 1, (len(images),), generator=generator)
        lefts = torch.randint(0, w - size + 1, (len(images),), generator=generator)
        return torch.stack([im[:, t:t + size, l:l + size] for im, t, l in zip(images, tops.tolist(), lefts.tolist())])

    return crop(), crop()
