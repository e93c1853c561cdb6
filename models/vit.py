"""The shared Vision Transformer: CLIP's image tower, MAE's encoder, the fine-tuned classifier.

Two position-embedding kinds: `learned` (CLIP) or fixed 2-D sine-cosine (`sincos`, MAE: a buffer,
never trained, identical in the pretrained encoder and the classifier built from it). `encode`
runs the transformer on any subset of patch tokens, which is how MAE's encoder sees only the
visible patches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.transformer import Transformer


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings [grid*grid, width], patches in row-major order, in
    MAE's (and timm's) layout: the first half of the channels encodes the patch's column, the second
    its row, each half sines then cosines (so MAE or timm weights load with rows and columns in place)."""
    if width % 4:
        raise ValueError(f"sincos position embeddings need a width divisible by 4, got {width}")
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def emb(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([emb(xs), emb(ys)], axis=1)).float()


class VisionTransformer(nn.Module):
    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        pos_embed: str = "learned",
        ln_pre: bool = True,
        eps: float = 1e-5,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.patch_embed = nn.Conv2d(3, width, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, width))
        elif pos_embed == "sincos":  # the class token's position is all zeros
            fixed = torch.cat([torch.zeros(1, width), sincos_2d(width, self.grid)])[None]
            self.register_buffer("pos_embed", fixed, persistent=False)
        else:
            raise ValueError(f"pos_embed: unknown kind '{pos_embed}' (learned, sincos)")
        self.ln_pre = nn.LayerNorm(width, eps=eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(width, layers, heads, mlp_ratio, eps)
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.width = width
        nn.init.normal_(self.cls_token, std=0.02)
        if pos_embed == "learned":
            nn.init.normal_(self.pos_embed, std=0.02)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embeddings, no class token: [B, N, width]."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        return x + self.pos_embed[:, 1:].to(x.dtype)  # a fixed buffer stays fp32 under DeepSpeed bf16

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The class token prepended to patch tokens `x` (all of them or a subset), through the
        transformer: [B, 1 + n, width]."""
        cls = (self.cls_token + self.pos_embed[:, :1].to(x.dtype)).expand(x.shape[0], -1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        return self.ln_post(self.transformer(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """All output tokens, class token first: [B, 1 + N, width]."""
        return self.encode(self.tokens(images))

    def layer_id(self, name: str) -> int:
        """Depth of parameter `name` for layer-wise lr decay: embeddings 0, block i -> i + 1,
        everything after the blocks L + 1."""
        if name.startswith(("patch_embed", "cls_token", "pos_embed", "ln_pre")):
            return 0
        if name.startswith("transformer.blocks."):
            return int(name.split(".")[2]) + 1
        return len(self.transformer.blocks) + 1
