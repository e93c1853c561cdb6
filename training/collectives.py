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


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import torch.distributed._functional_collectives as funcol
    # autograd-aware: the backward is a reduce-scatter (sum) of every rank's gradient
    return funcol.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
