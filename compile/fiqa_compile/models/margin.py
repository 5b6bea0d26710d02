"""Margin-penalty softmax heads (CosFace, ArcFace) and the CR-FIQA quality target ViT-FIQA regresses onto.

Both heads compare L2-normalised embeddings with L2-normalised class centres (cosine matrix ``cos``, (B, C)) and
penalise only the target logit before scaling by ``s``:

* CosFace (Wang et al. 2018):  ``s * (cos_y - m)``
* ArcFace (Deng et al. 2019):  ``s * cos(theta_y + m)``, computed as ``cos*cos(m) - sin*sin(m)``; past
  ``theta_y > pi - m`` the angle would wrap around, so the target falls back to ``cos_y - sin(pi - m) * m``
  (keeps the logit monotone in theta), or with ``easy_margin`` the margin is applied only where ``cos_y > 0``.

ViT-FIQA's quality head learns CR-FIQA's certainty ratio ``CCS / (NNCCS + 1 + eps)`` of the *unpenalised* cosine
matrix (CCS: cosine to the own class centre, NNCCS: highest cosine to any other centre) with a smooth-L1 loss
(beta 0.5) weighted by alpha = 10, added to the margin-softmax cross-entropy (authors' ``partial_fc_v2.py``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def _check_labels(cos: torch.Tensor, labels: torch.Tensor) -> None:
    if cos.ndim != 2:
        raise ValueError(f"cosine matrix must be (batch, classes), got {tuple(cos.shape)}")
    if labels.ndim != 1 or labels.shape[0] != cos.shape[0] or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an int tensor of shape ({cos.shape[0]},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cos.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {cos.shape[1]}), got min {int(labels.min())} "
                         f"max {int(labels.max())}")


def cosface_logits(cos: torch.Tensor, labels: torch.Tensor, s: float = 64.0, m: float = 0.35) -> torch.Tensor:
    """``s * (cos - m * onehot(labels))``."""
    _check_labels(cos, labels)
    onehot = F.one_hot(labels.long(), cos.shape[1]).to(cos.dtype)
    return s * (cos - m * onehot)


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, s: float = 64.0, m: float = 0.5,
                   easy_margin: bool = False) -> torch.Tensor:
    """``s * cos(theta + m)`` on the target logit, ``s * cos`` elsewhere; see the module docstring."""
    _check_labels(cos, labels)
    idx = labels.long()[:, None]
    target = cos.gather(1, idx)
    # clamp keeps d(sin)/d(cos) finite at |cos| = 1 (value error < 1e-6)
    sin = torch.sqrt((1.0 - target * target).clamp_min(1e-12))
    phi = target * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        phi = torch.where(target > 0, phi, target)
    else:
        phi = torch.where(target > math.cos(math.pi - m), phi, target - math.sin(math.pi - m) * m)
    return s * cos.scatter(1, idx, phi)


@torch.no_grad()
def certainty_ratio(logits_cos: torch.Tensor, labels: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """CR-FIQA certainty ratio per sample, (B,): ``CCS / (NNCCS + 1 + eps)`` from the unpenalised cosine matrix.

    A regression *target*, hence computed without gradient (as the authors do). Needs at least 2 classes.
    """
    _check_labels(logits_cos, labels)
    if logits_cos.shape[1] < 2:
        raise ValueError("certainty_ratio needs at least 2 classes (NNCCS is the best non-target cosine)")
    idx = labels.long()[:, None]
    ccs = logits_cos.gather(1, idx).squeeze(1)
    nnccs = logits_cos.scatter(1, idx, float("-inf")).amax(dim=1)
    return ccs / (nnccs + 1.0 + eps)


class MarginOutput(NamedTuple):
    """``logits``: scaled, margin-penalised logits for cross-entropy. ``cos``: the plain cosine matrix."""

    logits: torch.Tensor
    cos: torch.Tensor


class MarginHead(nn.Module):
    """Class centres (C, D) plus a margin rule; ``forward(embeddings, labels) -> MarginOutput``."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float) -> None:
        super().__init__()
        if num_classes < 2 or embedding_dim < 1:
            raise ValueError(f"need num_classes >= 2 and embedding_dim >= 1, got {num_classes}, {embedding_dim}")
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_dim)))  # arcface_torch init

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> MarginOutput:
        cos = self.cosine(embeddings)
        return MarginOutput(self.margin(cos, labels), cos)


class CosFaceHead(MarginHead):
    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embedding_dim, num_classes, s, m)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cosface_logits(cos, labels, self.s, self.m)


class ArcFaceHead(MarginHead):
    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False) -> None:
        super().__init__(embedding_dim, num_classes, s, m)
        self.easy_margin = easy_margin

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return arcface_logits(cos, labels, self.s, self.m, self.easy_margin)


class FIQALoss(NamedTuple):
    total: torch.Tensor        # recognition + alpha * quality
    recognition: torch.Tensor  # margin-softmax cross-entropy
    quality: torch.Tensor      # smooth-L1(quality, certainty ratio)
    target: torch.Tensor       # the certainty ratios, (B,)


class ViTFIQACriterion(nn.Module):
    """The ViT-FIQA / CR-FIQA training objective: CE(margin logits) + alpha * SmoothL1_beta(quality, CR)."""

    def __init__(self, head: MarginHead, alpha: float = 10.0, beta: float = 0.5) -> None:
        super().__init__()
        self.head, self.alpha, self.beta = head, alpha, beta

    def forward(self, embedding: torch.Tensor, quality: torch.Tensor, labels: torch.Tensor) -> FIQALoss:
        logits, cos = self.head(embedding, labels)
        target = certainty_ratio(cos, labels)
        ce = F.cross_entropy(logits, labels.long())
        q = F.smooth_l1_loss(quality.reshape(-1), target, beta=self.beta)
        return FIQALoss(ce + self.alpha * q, ce, q, target)
