"""The model sections of a recipe, one frozen dataclass per model kind (`kind` picks it), each
checking that its shape can be built (`problems`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from config.shapes import divisible, whole_patches
from config.typed import bounded, coerce
from families.clip.config import ClipModelConfig
from families.registry import family_configs


ModelConfig = ClipModelConfig   # the default model kind


@dataclass(frozen=True)
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
    mlp_ratio: float = bounded(4.0, gt=0.0)
    mask_ratio: float = bounded(0.75, ge=0.0, lt=1.0)
    norm_pix_loss: bool = True          # targets: pixels normalised per patch (mean 0, variance 1)

    def problems(self):
        yield from whole_patches(self.image_size, self.patch_size)
        yield from divisible("vision_width", self.vision_width, "vision_heads", self.vision_heads)
        yield from divisible("decoder_width", self.decoder_width, "decoder_heads", self.decoder_heads)
        for key in ("vision_width", "decoder_width"):   # 2-D sine-cosine position embeddings
            if getattr(self, key) % 4:
                yield key, f"{getattr(self, key)} is not a multiple of 4 (2-D sine-cosine position embeddings)"


@dataclass(frozen=True)
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
    mlp_ratio: float = bounded(4.0, gt=0.0)
    init_temperature: float = bounded(0.07, gt=0.0)
    queue_size: int = bounded(1024, ge=1)              # momentum features kept for ITC (a multiple of the global batch)
    momentum: float = bounded(0.995, ge=0.0, le=1.0)   # EMA of the momentum encoders
    alpha: float = bounded(0.4, ge=0.0, le=1.0)        # weight of the momentum model's soft targets in ITC
    itm_weight: float = bounded(1.0, ge=0.0)
    lm_weight: float = bounded(1.0, ge=0.0)
    label_smoothing: float = bounded(0.1, ge=0.0, lt=1.0)   # LM
    lm_vocab: tuple[int, ...] = ()      # LM output tokens (set from the training captions; () = all)

    def problems(self):
        yield from whole_patches(self.image_size, self.patch_size)
        yield from divisible("vision_width", self.vision_width, "vision_heads", self.vision_heads)
        yield from divisible("text_width", self.text_width, "text_heads", self.text_heads)


@dataclass(frozen=True)
class MDLMModelConfig:
    """A transformer language model over BPE tokens: `diffusion` is a masked-diffusion model
    (LLaDA: bidirectional, predicts masked tokens), `autoregressive` the same network with a causal
    mask predicting the next token (the baseline). `vocab_size`/`mask_id` come from the tokenizer."""
    kind: Literal["mdlm"] = "mdlm"
    objective: Literal["diffusion", "autoregressive"] = "diffusion"
    vocab_size: int = bounded(0, ge=0)                 # 0: the shard step's tokenizer
    mask_id: int = bounded(-1, ge=-1)                  # -1: the tokenizer's <|mask|>
    context_length: int = bounded(128, ge=2)           # longest sequence (pretraining seq_len, SFT sft_seq_len)
    width: int = bounded(256, ge=2)
    layers: int = bounded(4, ge=1)
    heads: int = bounded(4, ge=1)
    mlp_ratio: float = bounded(4.0, gt=0.0)
    eps: float = bounded(1e-3, gt=0.0, lt=1.0)         # diffusion: p_mask = (1 - eps) t + eps, t ~ U(0, 1)
    random_length_prob: float = bounded(0.01, ge=0.0, le=1.0)   # diffusion: share of batches cut to a random length

    def problems(self):
        yield from divisible("width", self.width, "heads", self.heads)
        if not self.width % self.heads and (self.width // self.heads) % 2:
            yield "width", (f"{self.width} / model.heads {self.heads} = {self.width // self.heads} channels per "
                            f"head: rotary position embeddings need an even number"), "heads"
        if self.vocab_size and self.mask_id >= self.vocab_size:
            yield "mask_id", f"{self.mask_id} is outside the vocabulary (model.vocab_size {self.vocab_size})", "vocab_size"


@dataclass(frozen=True)
class ViTClassifierConfig:
    """A ViT with a classification head on its mean-pooled patch tokens; built by the fine-tuning
    steps from the pretrained encoder's shape."""
    kind: Literal["vit_classifier"] = "vit_classifier"
    image_size: int = bounded(28, ge=1)
    patch_size: int = bounded(4, ge=1)
    vision_width: int = bounded(128, ge=1)
    vision_layers: int = bounded(4, ge=1)
    vision_heads: int = bounded(4, ge=1)
    mlp_ratio: float = bounded(4.0, gt=0.0)
    num_classes: int = bounded(10, ge=1)
    classes: tuple[str, ...] = ()
    pos_embed: Literal["learned", "sincos"] = "sincos"
    ln_pre: bool = False

    def problems(self):
        yield from whole_patches(self.image_size, self.patch_size)
        yield from divisible("vision_width", self.vision_width, "vision_heads", self.vision_heads)
        if self.pos_embed == "sincos" and self.vision_width % 4:
            yield "vision_width", f"{self.vision_width} is not a multiple of 4 (2-D sine-cosine position embeddings)"


# and the model configs of the families in families/ (families/registry.py)
AnyModelConfig = Union[(ClipModelConfig, MAEModelConfig, BlipModelConfig, MDLMModelConfig, ViTClassifierConfig,
                        *family_configs())]


def model_config(d: dict) -> AnyModelConfig:
    """A model config from its dict form (as stored with a checkpoint), chosen by `kind`."""
    return coerce(AnyModelConfig, dict(d), "model")
