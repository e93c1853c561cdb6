"""SigLIP: CLIP's image and text towers, its scale, and a learnable bias on the pair logits."""

from __future__ import annotations

import torch
from torch import nn

from data.loading.tokenizer import VOCAB_SIZE
from families.clip.model import CLIP


class SigLIP(CLIP):
    def __init__(self, cfg, vocab_size: int):
        super().__init__(cfg, vocab_size)  # logit_scale = ln(1 / init_temperature)
        self.logit_bias = nn.Parameter(torch.full((1,), float(cfg.init_bias)))  # shape [1], as the scale

    def forward(self, images: torch.Tensor, text: torch.Tensor):
        img, txt, scale = super().forward(images, text)
        return img, txt, scale, self.logit_bias


def build(cfg) -> SigLIP:

    return SigLIP(cfg, VOCAB_SIZE)
