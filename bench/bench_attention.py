"""Attention forward + backward on one CPU core: PyTorch's flash kernel vs the math kernel, fp32 and
bf16, at the sequence lengths of the default recipes (CLIP text 24, ViT 65, MDLM 128) and longer.
What `models/transformer.py` CPU_MATH_MAX_KEYS is set from."""

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def ms(b: int, n: int, dtype, backend, causal: bool, reps: int = 5) -> float:
    q, k, v = (torch.randn(b, 2, n, 64, dtype=dtype, requires_grad=True) for _ in range(3))

    def once():
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal).float().sum().backward()

    for _ in range(2):
        once()
    t = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - t) / reps * 1e3


def main():
    torch.set_num_threads(1)
    print("attention fwd+bwd, 2 heads of 64, one core: flash ms / math ms (ratio)")
    for b, n, causal in (
        (128, 24, True),
        (128, 65, False),
        (64, 128, True),
        (32, 192, True),
        (32, 256, True),
        (8, 1024, True),
    ):
        row = []
        for dtype in (torch.float32, torch.bfloat16):
            f, m = (ms(b, n, dtype, k, causal) for k in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH))
            row.append(f"{str(dtype)[6:]} {f:6.1f} / {m:6.1f} ({f / m:.2f}x)")
        print(f"  batch {b:3d} x {n:4d} tokens{' causal' if causal else '       '}: " + "   ".join(row))


if __name__ == "__main__":
    main()
