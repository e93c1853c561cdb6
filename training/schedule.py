"""How long a run is and how its learning rate moves: linear warmup, then cosine decay to min_lr."""
from __future__ import annotations

import math


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def plan_steps(train_cfg, train_samples: int, world_size: int) -> tuple[int, int, int]:
    """(epoch_samples, steps_per_epoch, total optimizer steps)."""
    epoch_samples = train_cfg.epoch_samples or train_samples
    global_batch = train_cfg.batch_size * world_size * train_cfg.grad_accum
    steps_per_epoch = max(1, math.ceil(epoch_samples / global_batch))
    return epoch_samples, steps_per_epoch, steps_per_epoch * train_cfg.epochs
