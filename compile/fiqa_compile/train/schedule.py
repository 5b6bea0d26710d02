"""Learning-rate schedule shared by teacher training and distillation."""
from __future__ import annotations

import math

import numpy as np


def warmup_cosine(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def epoch_batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int, offset: int, steps: int):
    """Batches ``offset..steps-1`` of one epoch as (rows, horizontal-flip mask).

    The order and the flips depend only on (seed, epoch), so a run resumed at step ``offset`` replays exactly
    the batches it would have seen without the interruption.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rows[rng.permutation(len(rows))]
    flips = rng.random(len(perm)) < 0.5
    for b in range(offset, steps):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        yield perm[sl], flips[sl]
