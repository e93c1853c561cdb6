"""MAE's tasks: pretraining (the reconstruction loss, a picture of reconstructions for MLflow) and
the fine-tuned ViT classifier."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.loading.pixels import MEAN, STD
from families.mae.timmio import checkpoint_problems, import_checkpoint
from training.checkpoint.model_file import split_init_from
from training.tasks import Task


class MAETask(Task):
    def __init__(self, config):
        super().__init__(config)
        fmt, path = split_init_from(self.init_from)
        if fmt == "timm":  # on the driver, before any worker starts
            for key, message in checkpoint_problems(path, self.mcfg):
                raise ValueError(f"{key}: {message}")

    def start(self, model, encoder_only=False):
        """`init_from` may also be `timm:<dir>`: the encoder from a timm ViT (families/mae/timmio.py);
        the decoder starts fresh."""
        fmt, path = split_init_from(self.init_from)
        if fmt != "timm":
            return super().start(model, encoder_only)

        _, weights = import_checkpoint(path, self.mcfg)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or any(k.startswith("encoder.") for k in missing):
            raise ValueError(
                f"train.init_from {self.init_from}: encoder weights missing "
                f"{[k for k in missing if k.startswith('encoder.')]}, not in this model {unexpected}"
            )
        return model

    def loss(self, strategy, batch, device):
        loss, _, _ = strategy.forward(batch["image"].to(device))
        return loss, {"reconstruction_loss": loss.detach()}

    def picture(self, model, batch, step, out_dir):
        path = Path(out_dir) / f"reconstruction-step{step:06d}.png"
        reconstruction_grid(model, batch["image"][:8], path)
        return path


class ClassifierTask(Task):
    """Fine-tuning: the ViT classifier, initialised from a pretrained encoder (`task.init_from`:
    an exported model.pt, local or s3://) or from random weights; layer-wise lr decay."""

    def build(self):
        model = self.mcfg.build()
        return self.start(model, encoder_only=True)

    def param_groups(self, model, tcfg):
        return model.param_groups(tcfg.weight_decay, self.options.layer_decay, tcfg.lr)

    def loader_fields(self):
        return {"label_field": self.options.label_field, "classes": tuple(self.mcfg.classes)}

    def loss(self, strategy, batch, device):
        logits = strategy.forward(batch["image"].to(device)).float()
        labels = batch["label"].to(device)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.options.label_smoothing)
        return loss, {"train_accuracy": (logits.detach().argmax(1) == labels).float().mean()}


def to_pixels(images: torch.Tensor):
    """Normalised [B, 3, H, W] tensors back to uint8 HWC arrays."""

    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = (images.detach().float().cpu() * std + mean).clamp(0, 1)
    return (x.permute(0, 2, 3, 1) * 255).round().byte().numpy()


@torch.no_grad()
def reconstruction_grid(
    model, images: torch.Tensor, path: Path, scale: int = 4, generator: Optional[torch.Generator] = None
) -> Path:
    """A PNG with one row per image: original | masked input | reconstruction."""

    was_training = model.training
    model.eval()
    params = next(model.parameters())
    masked, recon = model.reconstruct(images.to(params.device, params.dtype), generator=generator)
    model.train(was_training)
    rows = [np.concatenate(list(cols), axis=1) for cols in zip(to_pixels(images), to_pixels(masked), to_pixels(recon))]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    Path(path).write_bytes(buf.getvalue())
    return Path(path)
