"""The training engine: one loop per Ray Train worker, under `TorchTrainer`.

AdamW, linear warmup then cosine decay, gradient accumulation, clipping, bf16, under a strategy
(training/strategy.py: DDP or DeepSpeed ZeRO); the loop is the same for both. Every
`checkpoint_every` optimizer steps (and at the end) the strategy writes the training state (model,
optimizer, scheduler; rank 0 adds step, epoch and model config in `train_state.json`) and every
rank reports it to Ray Train. The data stream resumes at the exact batch (data/loader.py). A rerun with
the same run name and storage path resumes from the latest reported checkpoint: Ray Train restores
its checkpoint manager from storage and `ray.train.get_checkpoint()` returns it.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.loader import LoaderSpec, train_loader
from infra.storage import Store
from training import checkpointing
from training.divergence import DivergenceGuard
from training.strategy import make_strategy
from training.tasks import make_task

TRAIN_STATE = "train_state.json"
DIVERGED = "diverged.txt"   # written by rank 0 when training stopped on a diverging loss


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_ranks_sum(values: list[float], device) -> list[float]:
    """Each value summed over all ranks, in one all-reduce."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def plan_steps(train_cfg: dict, train_samples: int, world_size: int) -> tuple[int, int, int]:
    """(epoch_samples, steps_per_epoch, total optimizer steps)."""
    epoch_samples = train_cfg["epoch_samples"] or train_samples
    global_batch = train_cfg["batch_size"] * world_size * train_cfg["grad_accum"]
    steps_per_epoch = max(1, math.ceil(epoch_samples / global_batch))
    return epoch_samples, steps_per_epoch, steps_per_epoch * train_cfg["epochs"]


def resume(strategy, ckpt, tcfg: dict, total: int, rank: int) -> tuple[int, int | None, list]:
    """(step, resumed_from, loss history) after loading Ray Train's checkpoint `ckpt` (a restart or
    a rerun), else `train.resume_from` (an earlier run's checkpoint, under this run's settings),
    else (0, None, [])."""
    from ray.train import Checkpoint
    source = ckpt or (Checkpoint(tcfg["resume_from"]) if tcfg["resume_from"] else None)
    if not source:
        return 0, None, []
    with source.as_directory() as d:
        state = checkpointing.restore(strategy, Path(d), TRAIN_STATE, other_settings=not ckpt)
    step = state["step"]
    if not ckpt and step >= total:
        raise ValueError(f"train.resume_from {tcfg['resume_from']}: its step {step} is not before this "
                         f"run's last step {total}")
    if rank == 0:
        print(f"[train] resuming from {'checkpoint' if ckpt else tcfg['resume_from']} at step {step}/{total} "
              f"(epoch {state['epoch']})", flush=True)
    return step, step, state.get("loss_history", [])


def loader_spec(config: dict, task, epoch_samples: int, world: int, rank: int) -> LoaderSpec:
    tcfg, aug = config["train"], config["train"]["augment"]
    return LoaderSpec(urls=tuple(config["urls"]), batch_size=tcfg["batch_size"],
                      image_size=getattr(config["model_obj"], "image_size", 0), **task.loader_fields(),
                      epoch_samples=epoch_samples, world_size=world, rank=rank, seed=tcfg["seed"],
                      shuffle_buffer=tcfg["shuffle_buffer"], scale=(aug["scale_min"], aug["scale_max"]),
                      ratio=(aug["ratio_min"], aug["ratio_max"]), color_jitter=aug["color_jitter"],
                      alt_caption_prob=aug["alt_caption_prob"], hflip=aug["hflip"])


def injected_faults(config: dict, step: int, rank: int, world: int, saved: int | None) -> None:
    """Tests only, on a first attempt: rank 0 raises after `fail_at_step`; the last rank's process is
    SIGKILLed after `kill_at_step`."""
    fail = config.get("fail_at_step") == step and rank == 0
    kill = config.get("kill_at_step") == step and rank == world - 1
    if fail or kill:
        # Ray Train's controller collects reported checkpoints when it polls the workers (every 2 s):
        # a worker that fails before that (a raise can end its process too: DeepSpeed's teardown)
        # loses them, so the fault waits until the newest one is registered (in the controller's
        # snapshot in storage)
        deadline = time.time() + 120
        while saved and not checkpointing.registered(config["storage"], saved) and time.time() < deadline:
            time.sleep(0.2)
    if fail:
        raise RuntimeError(f"injected failure at step {step} (fail_at_step, tests only)")
    if kill:
        print(f"[train] rank {rank}: killing this worker process at step {step} (kill_at_step, tests only)",
              flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def train_loop_per_worker(config: dict) -> None:
    import logging

    import ray.train
    import ray.train.v2._internal.execution.context as train_ctx
    from ray.train import Checkpoint

    # Ray Train logs every report at INFO under a logger named by its file path: keep it quiet
    logging.getLogger(train_ctx.__file__).setLevel(logging.WARNING)

    tcfg = config["train"]
    nan_steps = config.get("nan_steps")   # tests only: (first step, count) with a NaN loss on rank 0
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, tcfg["cpus_per_worker"]))
    device = ray.train.torch.get_device() if tcfg["use_gpu"] else torch.device("cpu")

    import ray
    print(f"[train] rank {rank}/{world} on node {ray.get_runtime_context().get_node_id()}", flush=True)
    task = make_task(config)
    seed_everything(tcfg["seed"])  # identical initial weights on every rank
    model = task.build().to(device)
    if tcfg["activation_checkpointing"]:
        model.set_grad_checkpointing(True)
    opt = torch.optim.AdamW(task.param_groups(model, tcfg), lr=tcfg["lr"],
                            betas=tuple(tcfg["betas"]), eps=1e-6)
    epoch_samples, steps_per_epoch, total = plan_steps(tcfg, config["train_samples"], world)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(tcfg["warmup_steps"], total, tcfg["min_lr"] / tcfg["lr"]))
    strategy = make_strategy(model, opt, sched, tcfg, world, device, rank)

    ckpt = ray.train.get_checkpoint()
    step, resumed_from, history = resume(strategy, ckpt, tcfg, total, rank)   # history: rank 0's losses
    # torch/numpy/random streams per (rank, resume point); the data stream is resumed exactly
    seed_everything(tcfg["seed"] * 1000003 + rank * 7919 + step)

    tracker = None
    if rank == 0 and config.get("mlflow_run_id"):
        from infra.tracking import Tracker
        tracker = Tracker(config["tracking_uri"], config["mlflow_run_id"])

    micro = tcfg["grad_accum"]
    global_batch = tcfg["batch_size"] * world * micro
    spec = loader_spec(config, task, steps_per_epoch * global_batch, world, rank)
    model.train()
    if rank == 0:
        print(f"[train] {strategy.name} with {world} workers, {steps_per_epoch} steps/epoch of "
              f"{epoch_samples} samples, {total} steps, global batch {global_batch}", flush=True)

    saved = resumed_from   # the step of the newest checkpoint in storage

    def save_and_report(metrics: dict) -> None:
        nonlocal saved
        try:
            with tempfile.TemporaryDirectory() as tmp:
                strategy.save(Path(tmp))
                if rank == 0:
                    (Path(tmp) / TRAIN_STATE).write_text(json.dumps({
                        "step": step, "epoch": step // steps_per_epoch, "strategy": strategy.name,
                        "model_config": config["model"], "resumed_from": resumed_from,
                        "loss_history": history}))
                has_files = any(Path(tmp).iterdir())
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if has_files else None,
                                 checkpoint_dir_name=checkpointing.dir_name(step))
        except OSError as e:   # disk full, permission denied, read-only: the previous checkpoint stays
            checkpointing.remove_partial(config["storage"], step)
            raise checkpointing.write_failed(step, saved, config["storage"], e) from e
        saved = step

    guard = DivergenceGuard(tcfg["max_bad_steps"])
    t_last, n_last = time.time(), 0
    t_first, n_since_first = None, 0   # throughput over the run, the first (warm-up) step excluded
    loss_acc, loss_n = 0.0, 0
    skipped, shard_errors = 0, 0   # corrupt samples / shard read errors this rank's loader skipped
    logs: dict = {}
    while step < total:
        epoch = step // steps_per_epoch
        remaining = steps_per_epoch - step % steps_per_epoch
        # the rest of this epoch's micro-batches for this rank, the same as without the resume
        batches = iter(train_loader(spec, tcfg["loader_workers"], epoch,
                                    start=(step % steps_per_epoch) * micro))
        for _ in range(remaining):
            loss_sum = 0.0
            for m in range(micro):
                batch = next(batches)
                n_bad, n_err = batch.pop("skipped", (0, 0))
                skipped, shard_errors = skipped + n_bad, shard_errors + n_err
                loss, logs = task.loss(strategy, batch, device)
                if nan_steps and rank == 0 and nan_steps[0] <= step + 1 < nan_steps[0] + nan_steps[1]:
                    loss = loss * float("nan")    # tests only: a diverging loss on one rank
                strategy.backward(loss, last_micro=m == micro - 1)
                loss_sum += loss.item() / micro
            ranks_loss = all_ranks_sum([loss_sum], device)[0]   # NaN or inf when any rank's is
            grad_norm = strategy.step(skip=not math.isfinite(ranks_loss))
            bad = guard.update(step + 1, ranks_loss, grad_norm)
            if not bad:
                task.after_step(strategy)
            step += 1
            history.append(loss_sum)
            n_last += global_batch
            if t_first is None:
                t_first = time.time()
            else:
                n_since_first += global_batch
            loss_acc, loss_n = loss_acc + loss_sum, loss_n + 1
            if step % tcfg["log_every"] == 0 or step == total:
                dt = time.time() - t_last
                metrics = {"loss": loss_acc / loss_n, "lr": strategy.lr, **logs, "grad_norm": grad_norm,
                           "samples_per_s": n_last / dt, "epoch": step / steps_per_epoch}
                if task.sample_tokens:
                    metrics["tokens_per_s"] = metrics["samples_per_s"] * task.sample_tokens
                metrics["skipped_samples"], metrics["shard_errors"] = all_ranks_sum([skipped, shard_errors], device)
                if (metrics["skipped_samples"] or metrics["shard_errors"]) and rank == 0:
                    print(f"[train] step {step}: so far {metrics['skipped_samples']:.0f} corrupt samples skipped, "
                          f"{metrics['shard_errors']:.0f} shard reads cut short (all ranks)", flush=True)
                if rank == 0:
                    extra = " ".join(f"{k} {v:.4g}" for k, v in logs.items())
                    print(f"[train] step {step}/{total} loss {metrics['loss']:.4f} "
                          f"lr {metrics['lr']:.2e} {extra} "
                          f"{metrics['samples_per_s']:.0f} samples/s", flush=True)
                    if tracker:
                        tracker.log_metrics(metrics, step)
                t_last, n_last, loss_acc, loss_n = time.time(), 0, 0.0, 0
            every = tcfg["picture_every"]
            zero3 = strategy.name == "deepspeed" and tcfg["deepspeed"]["zero_stage"] == 3
            if rank == 0 and tracker and every and not zero3 and (step % every == 0 or step == total):
                with tempfile.TemporaryDirectory() as tmp:
                    picture = task.picture(strategy.module, batch, step, Path(tmp))
                    if picture:
                        tracker.log_artifact(picture, "pictures")
            stop = guard.stop_reason(step, total, saved, config["storage"], updates_skipped=strategy.name == "ddp")
            if stop:   # every rank stops here (same verdict); the driver raises DivergedError
                if rank == 0:
                    print(f"[train] {stop}", flush=True)
                    Store(config["storage"]).write_text(DIVERGED, stop)
                return
            if (step % tcfg["checkpoint_every"] == 0 or step == total) and not bad:
                run_rate = n_since_first / max(time.time() - t_first, 1e-9) if n_since_first else None
                save_and_report({"step": step, "loss": loss_sum, "run_samples_per_s": run_rate})
            if not ckpt:
                injected_faults(config, step, rank, world, saved)
        del batches
    if tracker and not tracker.flush(force=True):
        print(f"[train] MLflow unavailable at the end of training: {len(tracker.pending)} metric values "
              f"not written", flush=True)
