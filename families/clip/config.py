"""CLIP's model section: a ViT image tower and a causal text transformer in one embedding space."""

from __future__ import annotations

from typing import Literal

from config.shapes import divisible, whole_patches
from config.typed import Float, bounded, config_class
from data.loading.tokenizer import VOCAB_SIZE
from families.clip.model import CLIP
from families.clip.task import ClipTask


@config_class
class ClipModelConfig:
    kind: Literal["clip"] = "clip"
    embed_dim: int = bounded(128, ge=1)
    image_size: int = bounded(64, ge=1)
    patch_size: int = bounded(8, ge=1)
    vision_width: int = bounded(192, ge=1)
    vision_layers: int = bounded(4, ge=1)
    vision_heads: int = bounded(3, ge=1)
    text_width: int = bounded(128, ge=1)
    text_layers: int = bounded(3, ge=1)
    text_heads: int = bounded(2, ge=1)
    context_length: int = bounded(32, ge=3)  # start + at least one token + end
    mlp_ratio: Float = bounded(4.0, gt=0.0)
    init_temperature: Float = bounded(0.07, gt=0.0)

    def problems(self):
        yield from whole_patches(self.image_size, self.patch_size)
        yield from divisible("vision_width", self.vision_width, "vision_heads", self.vision_heads)
        yield from divisible("text_width", self.text_width, "text_heads", self.text_heads)

    def build(self):
        """The model (what a training task and `load_model` build)."""

        return CLIP(self, VOCAB_SIZE)

    def task_class(self):
        """The training task (what training/tasks.make_task calls)."""

        return ClipTask
