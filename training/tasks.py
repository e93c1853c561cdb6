"""What the engine trains: one small task per model kind.

A task builds its model, names the fields its batches need (text tokens, class labels), computes
the loss of a batch through the strategy, and may render a picture of its progress for MLflow.
The engine loop (training/engine.py) is the same for all of them.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from training.checkpoint.model_file import init_from
from training.models import build_model

LOGIT_SCALE_MAX = math.log(100.0)


class Task:
    def __init__(self, config: dict):
        self.mcfg = config["model_obj"]
        self.options = config.get("task") or {}

    def build(self) -> torch.nn.Module:
        return build_model(self.mcfg)

    def param_groups(self, model: torch.nn.Module, tcfg: dict) -> list[dict]:
        return param_groups(model, tcfg["weight_decay"])

    def loader_fields(self) -> dict:
        """Extra LoaderSpec fields (text context length, label field and classes)."""
        return {}

    def loss(self, strategy, batch: dict, device) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    sample_tokens = 0   # tokens per sample, for a tokens/s metric (language models)

    def after_step(self, strategy) -> None:
        """Called on every rank after every optimizer step (`strategy.module`: the unwrapped model)."""

    def picture(self, model: torch.nn.Module, batch: dict, step: int, out_dir: Path) -> Optional[Path]:
        """An image of the model's progress on `batch` (rank 0, every `train.picture_every`)."""
        return None


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings, tokens and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name or "token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ClipTask(Task):
    def loader_fields(self) -> dict:
        return {"context_length": self.mcfg.context_length}

    def loss(self, strategy, batch, device):
        from training.losses import clip_loss
        img_emb, txt_emb, scale = strategy.forward(batch["image"].to(device), batch["text"].to(device))
        loss = clip_loss(img_emb.float(), txt_emb.float(), scale.float())
        return loss, {"temperature": 1.0 / float(scale.detach())}

    def after_step(self, strategy):
        strategy.clamp_("logit_scale", 0.0, LOGIT_SCALE_MAX)   # temperature >= 1/100, as open_clip


class MAETask(Task):
    def loss(self, strategy, batch, device):
        loss, _, _ = strategy.forward(batch["image"].to(device))
        return loss, {"reconstruction_loss": float(loss.detach())}

    def picture(self, model, batch, step, out_dir):
        path = Path(out_dir) / f"reconstruction-step{step:06d}.png"
        reconstruction_grid(model, batch["image"][:8], path)
        return path


class ClassifierTask(Task):
    """Fine-tuning: the ViT classifier, initialised from a pretrained encoder (`task.init_from`:
    an exported model.pt, local or s3://) or from random weights; layer-wise lr decay."""

    def build(self):
        model = build_model(self.mcfg)
        return init_from(model, self.options["init_from"], encoder_only=True) if self.options.get("init_from") else model

    def param_groups(self, model, tcfg):
        return model.param_groups(tcfg["weight_decay"], self.options.get("layer_decay", 1.0), tcfg["lr"])

    def loader_fields(self):
        return {"label_field": self.options["label_field"], "classes": tuple(self.mcfg.classes)}

    def loss(self, strategy, batch, device):
        logits = strategy.forward(batch["image"].to(device)).float()
        labels = batch["label"].to(device)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.options.get("label_smoothing", 0.0))
        return loss, {"train_accuracy": (logits.argmax(1) == labels).float().mean().item()}


class BlipTask(Task):
    """ITC + ITM + LM; after each optimizer step the momentum encoders follow (EMA) and the
    temperature is kept in [0.001, 0.5], as in BLIP."""

    def __init__(self, config):
        from pipelines.config import blip_problems
        super().__init__(config)
        for key, message in blip_problems(self.mcfg, config["train_obj"]):   # checked at load time too
            raise ValueError(f"{key}: {message}")

    def build(self):
        from training.models.blip import init_momentum
        model = build_model(self.mcfg)
        init_momentum(model)
        # continued pretraining (CapFilt's second round)
        return init_from(model, self.options["init_from"]) if self.options.get("init_from") else model

    def loader_fields(self):
        return {"context_length": self.mcfg.context_length}

    def loss(self, strategy, batch, device):
        out = strategy.forward(batch["image"].to(device), batch["text"].to(device))
        return out["loss"], {k: float(out[k]) for k in ("itc", "itm", "lm")}

    def after_step(self, strategy):
        strategy.module.momentum_update()
        strategy.clamp_("temp", 0.001, 0.5)


class MDLMTask(Task):
    """Masked-diffusion pretraining (LLaDA), its SFT (`task.sft`: batches carry `prompt_len`;
    the prompt is never masked), or the autoregressive baseline (`model.objective`); a model
    may start from an exported one (`task.init_from`)."""

    def __init__(self, config):
        super().__init__(config)
        self.sft = bool(self.options.get("sft"))
        self.sample_tokens = self.options.get("seq_len") or self.mcfg.context_length
        if self.sft and self.mcfg.objective != "diffusion":
            raise ValueError("task.sft: SFT is for the masked-diffusion objective (model.objective diffusion)")

    def build(self):
        model = build_model(self.mcfg)
        return init_from(model, self.options["init_from"]) if self.options.get("init_from") else model

    def loader_fields(self):
        return {"tokens": True, "prompt_len": self.sft}

    def loss(self, strategy, batch, device):
        from training.losses_mdlm import ar_loss, diffusion_loss, forward_process, response_mask, sft_loss

        m = self.mcfg
        tokens = batch["tokens"].to(device)
        if m.objective == "autoregressive":
            loss = ar_loss(strategy.forward(tokens), tokens)
            return loss, {"perplexity": float(torch.exp(loss.detach()))}
        maskable = None
        if self.sft:
            maskable = response_mask(batch["prompt_len"].to(device), tokens.shape[1])
        elif m.random_length_prob and torch.rand(()).item() < m.random_length_prob:
            tokens = tokens[:, : int(torch.randint(1, tokens.shape[1] + 1, ()))]   # LLaDA: some random lengths
        noisy, masked, p_mask = forward_process(tokens, m.mask_id, m.eps, maskable)
        logits = strategy.forward(noisy)
        if self.sft:
            loss = sft_loss(logits, tokens, masked, p_mask, batch["prompt_len"].to(device))
        else:
            loss = diffusion_loss(logits, tokens, masked, p_mask)
        with torch.no_grad():
            hits = (logits[masked].argmax(-1) == tokens[masked]).float()
        return loss, {"masked_accuracy": float(hits.mean()) if hits.numel() else 0.0,
                      "mask_ratio": float(masked.float().mean())}


TASKS = {"clip": ClipTask, "mdlm": MDLMTask, "mae": MAETask, "blip": BlipTask, "vit_classifier": ClassifierTask}


def make_task(config: dict) -> Task:
    kind = config["model_obj"].kind
    if kind not in TASKS and hasattr(config["model_obj"], "task_class"):   # a family in families/
        return config["model_obj"].task_class()(config)
    if kind not in TASKS:
        raise ValueError(f"model.kind: no training task for '{kind}' (have {sorted(TASKS)})")
    return TASKS[kind](config)


def to_pixels(images: torch.Tensor):
    """Normalised [B, 3, H, W] tensors back to uint8 HWC arrays."""
    from data.loader import MEAN, STD
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = (images.detach().float().cpu() * std + mean).clamp(0, 1)
    return (x.permute(0, 2, 3, 1) * 255).round().byte().numpy()


@torch.no_grad()
def reconstruction_grid(model, images: torch.Tensor, path: Path, scale: int = 4,
                        generator: Optional[torch.Generator] = None) -> Path:
    """A PNG with one row per image: original | masked input | reconstruction."""
    import numpy as np
    from PIL import Image

    was_training = model.training
    model.eval()
    params = next(model.parameters())
    masked, recon = model.reconstruct(images.to(params.device, params.dtype), generator=generator)
    model.train(was_training)
    rows = [np.concatenate(list(cols), axis=1)
            for cols in zip(to_pixels(images), to_pixels(masked), to_pixels(recon))]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    Path(path).write_bytes(buf.getvalue())
    return Path(path)
