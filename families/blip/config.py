"""BLIP's model section, and its rules between the model and the training setup."""

from __future__ import annotations

from typing import Literal

from config.shapes import divisible, whole_patches
from config.typed import Float, bounded, config_class
from data.loading.tokenizer import VOCAB_SIZE
from families.blip.model import BLIP
from families.blip.task import BlipTask
from training.schedule import plan


@config_class
class BlipModelConfig:
    """BLIP: ViT + a text transformer that is unimodal encoder, image-grounded encoder and
    image-grounded decoder (shared but for self-attention); ITC (momentum distillation) + ITM + LM."""

    kind: Literal["blip"] = "blip"
    embed_dim: int = bounded(128, ge=1)
    image_size: int = bounded(64, ge=1)
    patch_size: int = bounded(8, ge=1)
    vision_width: int = bounded(128, ge=1)
    vision_layers: int = bounded(4, ge=1)
    vision_heads: int = bounded(2, ge=1)
    text_width: int = bounded(128, ge=1)
    text_layers: int = bounded(3, ge=1)
    text_heads: int = bounded(2, ge=1)
    context_length: int = bounded(24, ge=3)
    mlp_ratio: Float = bounded(4.0, gt=0.0)
    init_temperature: Float = bounded(0.07, gt=0.0)
    queue_size: int = bounded(1024, ge=1)  # momentum features kept for ITC (a multiple of the global batch)
    momentum: Float = bounded(0.995, ge=0.0, le=1.0)  # EMA of the momentum encoders
    alpha: Float = bounded(0.4, ge=0.0, le=1.0)  # weight of the momentum model's soft targets in ITC
    itm_weight: Float = bounded(1.0, ge=0.0)
    lm_weight: Float = bounded(1.0, ge=0.0)
    label_smoothing: Float = bounded(0.1, ge=0.0, lt=1.0)  # LM
    lm_vocab: tuple[int, ...] = ()  # LM output tokens (set from the training captions; () = all)

    def problems(self):
        yield from whole_patches(self.image_size, self.patch_size)
        yield from divisible("vision_width", self.vision_width, "vision_heads", self.vision_heads)
        yield from divisible("text_width", self.text_width, "text_heads", self.text_heads)

    def build(self):
        """The model (what a training task and `load_model` build)."""

        return BLIP(self, VOCAB_SIZE)

    def task_class(self):
        """The training task (what training/tasks.make_task calls)."""

        return BlipTask

    def train_problems(self, train):
        """BLIP's rules between the model and the training setup (checked when the recipe loads and
        by its training task)."""
        if train.strategy == "deepspeed" and train.deepspeed.zero_stage == 3:
            yield (
                "train.deepspeed.zero_stage",
                (
                    "model.kind blip: ZeRO-3 partitions the momentum encoders' parameters, "
                    "which BLIP updates outside the optimizer; use zero_stage 1 or 2"
                ),
                "train.strategy",
            )
        global_batch = plan(train).global_micro_batch  # the queue takes one micro-batch of every worker at once
        if self.queue_size % global_batch:
            yield (
                "model.queue_size",
                (
                    f"{self.queue_size} is not a multiple of the global batch {global_batch} "
                    f"(train.batch_size x train.num_workers)"
                ),
                "train.batch_size",
                "train.num_workers",
            )
