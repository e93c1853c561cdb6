"""Model FLOPs and the hardware's peak, for model FLOP/s utilisation (MFU).

FLOPs per sample are counted once per run with `torch.utils.flop_counter` on the first
micro-batch of training (forward and backward, every family alike; matmuls, convolutions and
attention, 2 FLOPs per multiply-add, causal attention counted whole as PaLM's MFU does). The peak is
`train.peak_flops` when set, else the dense bf16 tensor peak of a known GPU, else (CPU) the best
rate of a matmul measured on the worker's own threads in the run's precision.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten

# dense bf16 tensor-core peaks in FLOP/s (vendor data sheets; SXM parts), by a name fragment
GPU_PEAK_BF16 = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("4090", 165e12),
    ("A6000", 155e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


# PyTorch's counter knows the GPU attention kernels, not the CPU flash kernel every CPU SDPA call takes
@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def counter() -> FlopCounterMode:
    """A context that counts the FLOPs of what runs inside it (`.get_total_flops()`)."""
    return FlopCounterMode(display=False)


def gpu_peak(name: str) -> float:
    """The table's peak for a GPU named `name` (0: not in the table)."""
    return next((peak for fragment, peak in GPU_PEAK_BF16 if fragment in name), 0.0)


def cpu_matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    """FLOP/s of the best of `reps` n x n x n matmuls in `dtype` on this process's threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: the kernel's first call allocates and packs
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops(tcfg, device: torch.device) -> tuple[float, str]:
    """The FLOP/s one worker could do at best, and where that number comes from."""
    if tcfg.peak_flops:
        return tcfg.peak_flops, "train.peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name)
        return (peak, f"{name} bf16 data sheet") if peak else (0.0, f"{name}: not in the table, set train.peak_flops")
    dtype = torch.bfloat16 if tcfg.precision == "bf16" else torch.float32
    return cpu_matmul_peak(
        dtype
    ), f"measured {str(dtype).removeprefix('torch.')} matmul on {torch.get_num_threads()} thread(s)"
