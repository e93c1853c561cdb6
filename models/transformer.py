"""Pre-norm transformer blocks on PyTorch SDPA, shared by every tower (ViT, text, decoders)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

# On the CPU, PyTorch runs every SDPA call through its flash kernel, whose backward in bf16 is 2-3x
# slower than the plain softmax(QK^T)V for short sequences (`make bench-attention`: 128 x 65
# tokens, 2 heads of 64, forward + backward on one core: 62 ms flash, 31 ms math; flash wins
# from between 128 and 192 tokens). Up to this many keys a reduced-precision CPU call takes math.
CPU_MATH_MAX_KEYS = 160


def rotary_tables(n: int, head_dim: int, device=None, base: float = 10000.0):
    """Rotary position embedding (Su et al. 2021) tables (cos, sin), each [n, head_dim / 2]."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angle = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv[None]
    return angle.cos(), angle.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head's channels of x [B, H, N, D] by position."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def attention(q, k, v, causal: bool = False, mask=None) -> torch.Tensor:
    """Scaled dot-product attention of q, k, v [B, H, N, D] (`mask`: True where a key may be seen),
    on the fastest kernel for the device, dtype and length (same result up to rounding)."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and k.shape[-2] <= CPU_MATH_MAX_KEYS:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False, rope=None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = attention(q, k, v, causal)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, causal: bool = False, rope=None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), causal, rope)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5):
        """`eps`: the LayerNorms' (1e-5 as CLIP; MAE and timm's ViTs use 1e-6)."""
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, eps) for _ in range(layers))
        self.grad_checkpointing = False  # recompute each block in backward instead of storing it

    def forward(self, x: torch.Tensor, causal: bool = False, rope=None) -> torch.Tensor:
        """`rope`: (cos, sin) from rotary_tables() to rotate queries and keys by position."""
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, causal, rope, use_reentrant=False)
            else:
                x = blk(x, causal, rope)
        return x


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
