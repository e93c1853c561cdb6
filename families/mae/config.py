"""MAE's model sections: the masked autoencoder, and the ViT classifier its fine-tuning steps build."""

from __future__ import annotations

from typing import Literal

from config.shapes import divisible, whole_patches
from config.typed import Float, bounded, config_class
from families.mae.model import MAE, ViTClassifier
from families.mae.task import ClassifierTask, MAETask


@config_class
class MAEModelConfig:
    """Masked autoencoder (He et al. 2022): ViT encoder on the visible patches, light decoder."""

    kind: Literal["mae"] = "mae"
    image_size: int = bounded(28, ge=1)
    patch_size: int = bounded(4, ge=1)
    vision_width: int = bounded(128, ge=4)
    vision_layers: int = bounded(4, ge=1)
    vision_heads: int = bounded(4, ge=1)
    decoder_width: int = bounded(64, ge=4)
    decoder_layers: int = bounded(2, ge=1)
    decoder_heads: int = bounded(2, ge=1)
    mlp_ratio: Float = bounded(4.0, gt=0.0)
    mask_ratio: Float = bounded(0.75, ge=0.0, lt=1.0)
    norm_pix_loss: bool = True  # targets: pixels normalised per patch (mean 0, variance 1)

    def problems(self):
        yield from whole_patches(self.image_size, self.patch_size)
        yield from divisible("vision_width", self.vision_width, "vision_heads", self.vision_heads)
        yield from divisible("decoder_width", self.decoder_width, "decoder_heads", self.decoder_heads)
        for key in ("vision_width", "decoder_width"):  # 2-D sine-cosine position embeddings
            if getattr(self, key) % 4:
                yield key, f"{getattr(self, key)} is not a multiple of 4 (2-D sine-cosine position embeddings)"

    def build(self):
        """The model (what a training task and `load_model` build)."""

        return MAE(self)

    def task_class(self):
        """The training task (what training/tasks.make_task calls)."""

        return MAETask


@config_class
class ViTClassifierConfig:
    """A ViT with a classification head on its mean-pooled patch tokens; built by the fine-tuning
    steps from the pretrained encoder's shape."""

    kind: Literal["vit_classifier"] = "vit_classifier"
    image_size: int = bounded(28, ge=1)
    patch_size: int = bounded(4, ge=1)
    vision_width: int = bounded(128, ge=1)
    vision_layers: int = bounded(4, ge=1)
    vision_heads: int = bounded(4, ge=1)
    mlp_ratio: Float = bounded(4.0, gt=0.0)
    num_classes: int = bounded(10, ge=1)
    classes: tuple[str, ...] = ()
    pos_embed: Literal["learned", "sincos"] = "sincos"
    ln_pre: bool = False

    def problems(self):
        yield from whole_patches(self.image_size, self.patch_size)
        yield from divisible("vision_width", self.vision_width, "vision_heads", self.vision_heads)
        if self.pos_embed == "sincos" and self.vision_width % 4:
            yield "vision_width", f"{self.vision_width} is not a multiple of 4 (2-D sine-cosine position embeddings)"

    def build(self):
        """The model (what a training task and `load_model` build)."""

        return ViTClassifier(self)

    def task_class(self):
        """The training task (what training/tasks.make_task calls)."""

        return ClassifierTask
