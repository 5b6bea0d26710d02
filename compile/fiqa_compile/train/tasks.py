"""What each teacher learns: the loss on a batch and the score it predicts, on the label's own scale.

* :class:`UtilityTask` (ViT-FIQA): margin-penalty softmax on the identities of the training split for the
  embedding head, plus smooth-L1 regression of the quality head onto the certainty ratio measured with
  dlib's FR model (z-scored with training statistics), as ViT-FIQA / CR-FIQA train their quality branch.
* :class:`PerceptualTask` (DSL-FIQA): regression onto the pseudo-MOS plus a pairwise ranking term, since
  the score's job is to order faces.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fiqa_compile.train.data import LabelSet


def pairwise_rank_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Logistic loss on every ordered pair whose targets differ: pushes pred to order like target."""
    dp = pred[:, None] - pred[None, :]
    dt = target[:, None] - target[None, :]
    mask = dt.abs() > 1e-6
    if not mask.any():
        return pred.sum() * 0.0
    return F.softplus(-(dp - margin) * torch.sign(dt))[mask].mean()


class UtilityTask:
    name = "utility"
    label_key = "cr"

    def __init__(self, labels: LabelSet, train_rows: np.ndarray, embedding_dim: int, margin: str = "cosface",
                 reg_weight: float = 10.0, rank_weight: float = 1.0):
        from fiqa_compile.models.margin import ArcFaceHead, CosFaceHead

        rows = train_rows[np.isfinite(labels.cr[train_rows])]
        self.rows = rows
        idents = np.unique(labels.identity[rows])
        if len(idents) < 2:
            raise ValueError(f"the utility teacher's margin-softmax head needs >= 2 training identities with a "
                             f"certainty-ratio label (people with >= 2 photos), found {len(idents)}; label more people "
                             "or lower --held-out")
        self.class_of = {k: i for i, k in enumerate(idents)}
        self.mean = float(labels.cr[rows].mean())
        self.std = float(labels.cr[rows].std() + 1e-8)
        self.head = {"cosface": CosFaceHead, "arcface": ArcFaceHead}[margin](embedding_dim, len(idents))
        self.reg_weight, self.rank_weight = reg_weight, rank_weight
        self.labels = labels

    def filter_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows[np.isfinite(self.labels.cr[rows])]

    def parameters(self):
        return self.head.parameters()

    def loss(self, model, batch: dict, rows: np.ndarray) -> tuple[torch.Tensor, dict]:
        out = model(batch["image"])
        target = torch.from_numpy((self.labels.cr[rows] - self.mean) / self.std).float()
        classes = torch.tensor([self.class_of[i] for i in self.labels.identity[rows]])
        ce = F.cross_entropy(self.head(out.embedding, classes).logits, classes)
        reg = F.smooth_l1_loss(out.quality, target)
        rank = pairwise_rank_loss(out.quality, target)
        loss = ce + self.reg_weight * reg + self.rank_weight * rank
        return loss, {"ce": ce.item(), "reg": reg.item(), "rank": rank.item()}

    @torch.no_grad()
    def predict(self, model, batch: dict) -> np.ndarray:
        return model(batch["image"]).quality.numpy() * self.std + self.mean

    def state(self) -> dict:
        return {"target": "cr", "mean": self.mean, "std": self.std, "classes": len(self.class_of),
                "head": self.head.state_dict()}


class PerceptualTask:
    name = "perceptual"
    label_key = "mos"

    def __init__(self, labels: LabelSet, train_rows: np.ndarray, rank_weight: float = 1.0, train_crops: int = 1,
                 seed: int = 0, **_):
        self.labels = labels
        # random crops per face per step, as the paper trains (eval: fixed crops); one keeps a CPU step ~3x cheaper
        self.train_crops = train_crops
        self._gen = torch.Generator().manual_seed(seed)
        self.rows = train_rows
        self.rank_weight = rank_weight
        # DSL-FIQA's score head ends in a ReLU (non-negative), so the target is MOS/100 in [0, 1], not z-scores.
        self.mean, self.std = 0.0, 100.0

    def filter_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def parameters(self):
        return []

    def loss(self, model, batch: dict, rows: np.ndarray) -> tuple[torch.Tensor, dict]:
        from fiqa_compile.models.dsl_fiqa import random_crop_boxes

        cfg = model.cfg
        boxes = random_crop_boxes(cfg.face_size, cfg.img_size, self.train_crops, generator=self._gen)
        pred = model(batch["image"], landmarks=batch["lm68"], boxes=boxes)
        target = torch.from_numpy((self.labels.mos[rows] - self.mean) / self.std).float()
        reg = F.smooth_l1_loss(pred, target)
        rank = pairwise_rank_loss(pred, target)
        return reg + self.rank_weight * rank, {"reg": reg.item(), "rank": rank.item()}

    @torch.no_grad()
    def predict(self, model, batch: dict) -> np.ndarray:
        return model(batch["image"], landmarks=batch["lm68"]).numpy() * self.std + self.mean

    def state(self) -> dict:
        return {"target": "mos", "mean": self.mean, "std": self.std}


TASKS = {"utility": UtilityTask, "perceptual": PerceptualTask}
