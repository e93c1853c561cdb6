"""CLIP: a ViT image tower and a causal text transformer projected into one embedding space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.transformer import Transformer, init_weights
from models.vit import VisionTransformer


class TextTransformer(nn.Module):
    def __init__(
        self, vocab_size: int, context_length: int, width: int, layers: int, heads: int, mlp_ratio: float = 4.0
    ):
        super().__init__()
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.ln_final = nn.LayerNorm(width)
        self.context_length = context_length
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embed(text) + self.pos_embed[:, : text.shape[1]]
        return self.ln_final(self.transformer(x, causal=True))


class CLIP(nn.Module):
    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.visual = VisionTransformer(
            cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.mlp_ratio
        )
        self.text = TextTransformer(
            vocab_size, cfg.context_length, cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.mlp_ratio
        )
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        self.apply(init_weights)
        # shape [1], not a 0-dim scalar: DeepSpeed broadcasts parameters through a byte view
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.init_temperature)))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enabled
        self.text.transformer.grad_checkpointing = enabled

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.image_proj(self.visual(images)[:, 0])
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        h = self.text(text)
        eot = text.argmax(dim=-1)  # the end token has the largest id: pool there, as CLIP does
        x = self.text_proj(h[torch.arange(h.shape[0]), eot])
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, text: torch.Tensor):
        # no cap here: the task clamps the parameter after each step (a capped exp has no gradient)
        return self.encode_image(images), self.encode_text(text), self.logit_scale.exp()
