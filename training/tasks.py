"""What the engine trains: one small task per model kind.

A task builds its model, names the fields its batches need (text tokens, class labels), computes
the loss of a batch through the strategy, and may render a picture of its progress for MLflow.
The engine loop (training/engine.py) is the same for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from training.checkpoint.model_file import init_from, split_init_from
from training.config import RunConfig, TaskOptions


class Task:
    def __init__(self, config: RunConfig):
        self.mcfg = config.model
        self.options: TaskOptions = config.task
        self.init_from = self.options.init_from  # the pretraining steps pass the recipe's train.init_from

    def build(self) -> torch.nn.Module:
        return self.start(self.mcfg.build())

    def start(self, model: torch.nn.Module, encoder_only: bool = False) -> torch.nn.Module:
        """`model` with the weights of `init_from` (an exported model.pt) when there is one."""
        if not self.init_from:
            return model
        if split_init_from(self.init_from)[0]:
            raise ValueError(
                f"train.init_from {self.init_from}: a {self.mcfg.kind} model starts from a model.pt "
                f"of this project only"
            )
        return init_from(model, self.init_from, encoder_only)

    def param_groups(self, model: torch.nn.Module, tcfg) -> list[dict]:
        return param_groups(model, tcfg.weight_decay)

    def loader_fields(self) -> dict:
        """Extra LoaderSpec fields (text context length, label field and classes)."""
        return {}

    def loss(self, strategy, batch: dict, device) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    sample_tokens = 0  # tokens per sample, for a tokens/s metric (language models)

    def after_step(self, strategy) -> None:
        """Called on every rank after every optimizer step (`strategy.module`: the unwrapped model)."""

    def picture(self, model: torch.nn.Module, batch: dict, step: int, out_dir: Path) -> Optional[Path]:
        """An image of the model's progress on `batch` (rank 0, every `train.picture_every`)."""
        return None


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings, tokens and the temperature."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name or "token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_task(config: RunConfig) -> Task:
    """The task of the run's model config (`task_class()`: each family's config names its own)."""
    mcfg = config.model
    if not hasattr(mcfg, "task_class"):
        raise ValueError(f"model.kind: no training task for '{mcfg.kind}'")
    return mcfg.task_class()(config)
