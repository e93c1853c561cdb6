"""The heap corruption of the training workers, without Ray, MLflow or a loader: 2 gloo ranks (DDP),
CLIP's gather-with-gradient of two embeddings, bf16 autocast, the fused AdamW kernel, in a loop.

    python bench/repro_funcol_heap.py MODE [ITERATIONS]

MODE `funcol`: the gather of torch.distributed._functional_collectives (all_gather_single_autograd:
an AsyncCollectiveTensor waited on first use, a reduce_scatter in its backward), as the project had
it until 2026-12-06. On this 2-core machine a rank died of SIGSEGV or `malloc(): unaligned tcache
chunk detected` (SIGABRT) within 10,000 iterations (seconds to a minute) in each of 6 runs; in a
core dump the victim was a gloo thread's malloc in a DDP all-reduce.
MODE `blocking`: training/collectives.py's gather (blocking all_gather, all_reduce in the backward):
no crash in 30,000 iterations. MODE `async-forward` / `async-backward`: the functional op on one
side only, waited at once: no crash in 16,000 iterations each. Environment AUTOCAST=0 or FUSED=0
(fp32, or the for-each AdamW): no crash in 6,000 iterations with `funcol`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.collectives import _GatherWithGrad, gather_with_grad  # noqa: E402


class HalfAsync(torch.autograd.Function):
    """One side through the functional collective (waited at once), the other blocking."""

    @staticmethod
    def forward(ctx, x, side):
        import torch.distributed._functional_collectives as funcol

        ctx.side, w = side, dist.get_world_size()
        if side == "async-forward":
            return funcol.wait_tensor(
                torch.ops._c10d_functional.all_gather_into_tensor(x, w, dist.group.WORLD.group_name)
            )
        return _GatherWithGrad.forward(ctx, x)

    @staticmethod
    def backward(ctx, g):
        import torch.distributed._functional_collectives as funcol

        w = dist.get_world_size()
        if ctx.side == "async-backward":
            return funcol.wait_tensor(
                torch.ops._c10d_functional.reduce_scatter_tensor(g.contiguous(), "sum", w, dist.group.WORLD.group_name)
            ), None
        return _GatherWithGrad.backward(ctx, g), None


def gather(x, mode):
    if mode == "funcol":
        import torch.distributed._functional_collectives as funcol

        return funcol.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
    if mode == "blocking":
        return gather_with_grad(x)
    return HalfAsync.apply(x.contiguous(), mode)


def main(rank: int, world: int, iterations: int, mode: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    on = lambda k: os.environ.get(k, "1") == "1"  # noqa: E731
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
    opt = torch.optim.AdamW(model.parameters(), fused=on("FUSED"), foreach=not on("FUSED"))
    target = torch.arange(32) + rank * 32
    t0 = time.time()
    for i in range(iterations):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on("AUTOCAST")):
            x = F.normalize(model(torch.randn(32, 64)), dim=-1)
            y = F.normalize(model(torch.randn(32, 64)), dim=-1)
            gx, gy = gather(x, mode), gather(y, mode)
            loss = F.cross_entropy(14 * x @ gy.T, target) + F.cross_entropy(14 * y @ gx.T, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rank == 0 and i % 2000 == 0:
            print(f"{mode}: iteration {i}, {time.time() - t0:.0f}s", flush=True)
    dist.destroy_process_group()
    if rank == 0:
        print(f"{mode}: {iterations} iterations without a crash", flush=True)


if __name__ == "__main__":
    import torch.multiprocessing as mp

    modes = ("funcol", "blocking", "async-forward", "async-backward")
    if len(sys.argv) < 2 or sys.argv[1] not in modes:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(modes)} [ITERATIONS]")
    mp.spawn(main, args=(2, int(sys.argv[2]) if len(sys.argv) > 2 else 20000, sys.argv[1], 29537), nprocs=2)
