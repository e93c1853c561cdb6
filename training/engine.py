"""The training engine: one loop per Ray Train worker, under `TorchTrainer`.

AdamW, linear warmup then cosine decay (training/schedule.py), gradient accumulation, clipping,
bf16, under a strategy (training/strategy.py: DDP or DeepSpeed ZeRO); the loop is the same for
both and fits on a screen (`train_loop_per_worker`). What happens after a step (metrics and
MLflow, pictures, the divergence guard, checkpoints) are callbacks (training/callbacks.py; a run
may add its own: the tests inject their faults that way, tests/faults.py). Every `checkpoint_every` optimizer steps (and at the
end) the strategy writes the training state (model, optimizer, scheduler; rank 0 adds step,
epoch and model config in `train_state.json`) and every rank reports it to Ray Train. The data
stream resumes at the exact batch (data/loading/loader.py). A rerun with the same run name and storage
path resumes from the latest reported checkpoint: Ray Train restores its checkpoint manager from
storage and `ray.train.get_checkpoint()` returns it.
"""

from __future__ import annotations

import faulthandler
import itertools
import logging
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Optional, cast

import numpy as np
import torch

from data.loading.loader import LoaderSpec, train_loader
from infra.tracking import Tracker
from training import flops
from training.callbacks import Checkpoints, Guard, MetricsLog, Pictures, SystemMetrics
from training.checkpoint.resume import resume
from training.collectives import all_ranks_sum
from training.config import RunConfig
from training.prefetch import Prefetcher
from training.schedule import Plan, lr_lambda, plan
from training.strategy import adamw_kernel, make_strategy, resolve_precision
from training.tasks import make_task

__all__ = ["train_loop_per_worker", "lr_lambda", "plan"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loader_spec(config: RunConfig, task, p: Plan, rank: int) -> LoaderSpec:
    """This rank's stream: every epoch `steps_per_epoch` global batches of micro-batches."""
    tcfg, aug = config.train, config.train.augment
    return LoaderSpec(
        urls=tuple(config.urls),
        batch_size=p.micro_batch,
        image_size=getattr(config.model, "image_size", 0),
        **task.loader_fields(),
        epoch_samples=p.steps_per_epoch * p.global_batch,
        world_size=p.world,
        rank=rank,
        seed=tcfg.seed,
        shuffle_buffer=tcfg.shuffle_buffer,
        scale=(aug.scale_min, aug.scale_max),
        ratio=(aug.ratio_min, aug.ratio_max),
        color_jitter=aug.color_jitter,
        alt_caption_prob=aug.alt_caption_prob,
        hflip=aug.hflip,
    )


@dataclass
class Run:
    """What the loop and its callbacks share on one worker."""

    config: RunConfig
    plan: Plan  # batch sizes and steps (training/schedule.py)
    rank: int
    device: Any
    task: Any
    strategy: Any
    step: int
    resumed_from: Optional[int]
    history: list  # rank 0's loss per step
    restarted: bool  # Ray Train restored a checkpoint (a restart or a rerun)
    tracker: Any = None
    saved: Optional[int] = None  # the step of the newest checkpoint in storage
    skipped: int = 0  # corrupt samples / shard read errors this rank's loader skipped
    shard_errors: int = 0
    spec: Optional[LoaderSpec] = None
    callbacks: list = field(default_factory=list)
    flops_per_sample: Optional[float] = None  # forward + backward, counted on the first micro-batch
    peak_flops: float = 0.0  # one worker's peak FLOP/s (training/flops.py)
    logged: Optional[tuple] = None  # (step, loss) of the last log line (callbacks.MetricsLog)

    @property
    def tcfg(self):
        """The run's TrainConfig (training/config.py)."""
        return self.config.train

    @property
    def world(self) -> int:
        return self.plan.world

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def total(self) -> int:
        return self.plan.total

    @property
    def global_batch(self) -> int:
        return self.plan.global_batch


@dataclass
class StepOut:
    loss: float  # this rank's loss, averaged over the micro-batches
    grad_norm: Optional[float]
    bad: bool  # a non-finite loss (any rank) or gradient norm
    logs: dict  # the task's own metrics
    batch: dict  # the last micro-batch (for pictures)


def setup(config: RunConfig) -> Run:
    """The model, optimizer, schedule and strategy of this worker, resumed from a checkpoint when
    Ray Train has one (or from `train.resume_from`)."""

    import ray
    import ray.train

    faulthandler.enable(all_threads=True)  # a native crash: every thread's stack in this worker's log
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, config.train.cpus_per_worker))
    device = ray.train.torch.get_device() if config.train.use_gpu else torch.device("cpu")  # type: ignore[attr-defined]  # loaded by Ray's TorchTrainer
    print(f"[train] rank {rank}/{world} on node {ray.get_runtime_context().get_node_id()}", flush=True)
    precision, why = resolve_precision(config.train.precision, device)
    config = replace(config, train=replace(config.train, precision=precision))  # what `auto` came to, here
    tcfg, task = config.train, make_task(config)
    seed_everything(tcfg.seed)  # identical initial weights on every rank
    model = task.build().to(device)
    if tcfg.activation_checkpointing:
        model.set_grad_checkpointing(True)  # type: ignore[operator]  # the family model's own method
    kernel = adamw_kernel(tcfg.optimizer_kernel, device)
    opt = torch.optim.AdamW(
        task.param_groups(model, tcfg),
        lr=tcfg.lr,
        betas=cast("tuple[float, float]", tuple(tcfg.betas)),  # TrainConfig.betas: two floats
        eps=1e-6,
        fused=kernel == "fused" or None,
        foreach=kernel == "foreach" or None,
    )
    p = plan(tcfg, config.train_samples, world)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg.warmup_steps, p.total, tcfg.min_lr / tcfg.lr))
    strategy = make_strategy(model, opt, sched, tcfg, world, device, rank)
    ckpt = ray.train.get_checkpoint()
    step, resumed_from, history = resume(strategy, ckpt, tcfg, p.total, rank)
    # torch/numpy/random streams per (rank, resume point); the data stream is resumed exactly
    seed_everything(tcfg.seed * 1000003 + rank * 7919 + step)
    run = Run(
        config,
        p,
        rank,
        device,
        task,
        strategy,
        step,
        resumed_from,
        history,
        restarted=ckpt is not None,
        saved=resumed_from,
    )
    if rank == 0 and config.mlflow_run_id:
        run.tracker = Tracker(config.tracking_uri, config.mlflow_run_id)
    run.spec = loader_spec(config, task, p, rank)
    run.callbacks = [MetricsLog(), Pictures(), Guard(run), Checkpoints(), SystemMetrics(run), *config.callbacks]
    if rank == 0:
        announce(run, why, kernel)
    return run


def announce(run: Run, why: str, kernel: str) -> None:
    """Rank 0's line of what the run came to on this machine (MLflow gets the resolved values)."""
    tcfg, p = run.tcfg, run.plan
    run.peak_flops, source = flops.peak_flops(tcfg, run.device)
    print(
        f"[train] {run.strategy.name} with {p.world} workers, {p.steps_per_epoch} steps/epoch of "
        f"{p.epoch_samples} samples, {p.total} steps, global batch {p.global_batch}; {tcfg.precision} ({why}), "
        f"{'compiled' if tcfg.compile else 'eager'}, {kernel} AdamW; peak {run.peak_flops / 1e9:.0f} GFLOP/s "
        f"per worker ({source})",
        flush=True,
    )
    if run.tracker:
        run.tracker.log_params(
            {
                "resolved.precision": tcfg.precision,
                "resolved.peak_source": source,
                "resolved.peak_tflops_per_worker": f"{run.peak_flops / 1e12:.4g}",
            }
        )


def micro_batches(run: Run):
    """This rank's micro-batches from `run.step` to the end, epoch after epoch, from one loader
    (started here, on the training thread: its workers are forked before any read-ahead thread
    runs), starting at the batch a run without the resume would be at (data/loading/loader.py)."""
    spe, accum = run.steps_per_epoch, run.tcfg.grad_accum
    first, last = run.step // spe, -(-run.total // spe)
    assert run.spec is not None  # set by setup()
    loader = train_loader(run.spec, run.tcfg.loader_workers, first, start=(run.step % spe) * accum, epochs=last - first)
    return itertools.islice(iter(loader), (run.total - run.step) * accum)


def micro_step(run: Run, batch: dict, last: bool):
    """Forward and backward of one micro-batch; the loss (a tensor: no wait on the device here)."""
    loss, logs = run.task.loss(run.strategy, batch, run.device)
    for c in run.callbacks:
        loss = c.scale_loss(run, loss)
    run.strategy.backward(loss, last_micro=last)
    return loss.detach().float(), logs


def train_step(run: Run, batches) -> StepOut:
    """One optimizer step over `train.grad_accum` micro-batches of `batches`; the host waits for the
    device once a step (the loss's all-reduce, then the gradient norm), never per micro-batch."""
    micro, loss_sum = run.tcfg.grad_accum, 0.0
    for m in range(micro):
        batch = next(batches)
        n_bad, n_err = batch.pop("skipped", (0, 0))
        run.skipped, run.shard_errors = run.skipped + n_bad, run.shard_errors + n_err
        if run.flops_per_sample is None:  # counted once, on this attempt's first micro-batch
            with flops.counter() as count, run.strategy.uncompiled():
                loss, logs = micro_step(run, batch, m == micro - 1)
            run.flops_per_sample = count.get_total_flops() / run.tcfg.batch_size
        else:
            loss, logs = micro_step(run, batch, m == micro - 1)
        loss_sum = loss_sum + loss / micro
    loss_sum = float(loss_sum)
    ranks_loss = all_ranks_sum([loss_sum], run.device)[0]  # NaN or inf when any rank's is
    grad_norm = run.strategy.step(skip=not math.isfinite(ranks_loss))
    guard = next(c for c in run.callbacks if isinstance(c, Guard))
    bad = guard.bad(run.step + 1, ranks_loss, grad_norm)
    if not bad:
        run.task.after_step(run.strategy)
    return StepOut(loss_sum, grad_norm, bad, logs, batch)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker: `loop_config["run"]` is the run's RunConfig."""

    import ray.train.v2._internal.execution.context as train_ctx

    # Ray Train logs every report at INFO under a logger named by its file path: keep it quiet
    logging.getLogger(train_ctx.__file__).setLevel(logging.WARNING)
    run = setup(loop_config["run"])
    run.strategy.module.train()
    batches = Prefetcher(micro_batches(run), run.tcfg.prefetch)
    try:
        while run.step < run.total:
            out = train_step(run, batches)
            run.step += 1
            run.history.append(out.loss)
            if any(c.after_step(run, out) for c in run.callbacks):  # in order; a stop skips the rest
                return
        for c in run.callbacks:
            c.at_end(run)
    finally:
        batches.close()
        for c in run.callbacks:
            c.close(run)
