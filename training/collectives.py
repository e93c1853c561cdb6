"""Collective helpers of the training loop (every rank calls them at the same point)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_ranks_sum(values: list[float], device) -> list[float]:
    """Each value summed over all ranks, in one all-reduce."""

    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient into the owner's slice:
    blocking collectives of the process group, which return only when the data is in place."""

    @staticmethod
    def forward(ctx, x):

        world = dist.get_world_size()
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        dist.all_gather_single(out, x)
        return out

    @staticmethod
    def backward(ctx, grad):

        world, rank = dist.get_world_size(), dist.get_rank()
        n = grad.shape[0] // world
        if dist.get_backend() == "nccl":
            mine = grad.new_empty((n, *grad.shape[1:]))
            dist.reduce_scatter_single(mine, grad.contiguous())
            return mine
        total = grad.clone(memory_format=torch.contiguous_format)  # never the incoming gradient itself
        dist.all_reduce(total)  # gloo: every rank's gradient summed, then this rank's rows
        return total.narrow(0, rank * n, n)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` concatenated along dim 0, with gradient (CLIP's and SigLIP's losses)."""

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x.contiguous())
