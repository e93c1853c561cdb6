"""How long a run is and how its learning rate moves: linear warmup, then cosine decay to min_lr.
`plan` is the one place the batch sizes and step counts of a run are computed."""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@dataclass(frozen=True)
class Plan:
    micro_batch: int  # samples per worker per forward/backward (train.batch_size)
    world: int  # workers
    grad_accum: int  # micro-batches per optimizer step
    epoch_samples: int
    steps_per_epoch: int  # optimizer steps
    total: int

    @property
    def global_micro_batch(self) -> int:
        """Samples of one micro-batch on every worker (what BLIP's queue takes in at once)."""
        return self.micro_batch * self.world

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step."""
        return self.global_micro_batch * self.grad_accum


def plan(train_cfg, train_samples: int = 0, world: int | None = None) -> Plan:
    """The batch sizes and steps of `train_cfg` over `train_samples` on `world` workers (default:
    train.num_workers); an epoch is `train.epoch_samples`, or the train split."""
    world = train_cfg.num_workers if world is None else world
    epoch_samples = train_cfg.epoch_samples or train_samples
    global_batch = train_cfg.batch_size * world * train_cfg.grad_accum
    steps_per_epoch = max(1, math.ceil(epoch_samples / global_batch))
    return Plan(
        train_cfg.batch_size,
        world,
        train_cfg.grad_accum,
        epoch_samples,
        steps_per_epoch,
        steps_per_epoch * train_cfg.epochs,
    )
