"""Collective helpers of the training loop (every rank calls them at the same point)."""
from __future__ import annotations

import torch


def all_ranks_sum(values: list[float], device) -> list[float]:
    """Each value summed over all ranks, in one all-reduce."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
