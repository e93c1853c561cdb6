"""The training engine: one loop per Ray Train worker, under `TorchTrainer`.

AdamW, linear warmup then cosine decay, gradient accumulation, clipping, optional bf16 autocast.
Every `checkpoint_every` optimizer steps (and at the end) rank 0 writes the full training state
(model, optimizer, scheduler, step, epoch, RNG) and every rank reports it to Ray Train. A rerun with
the same run name and storage path resumes from the latest reported checkpoint: Ray Train restores
its checkpoint manager from storage and `ray.train.get_checkpoint()` returns it.
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.loader import LoaderSpec, train_loader
from data.tokenizer import get_tokenizer
from training.losses import clip_loss
from training.models.clip import build_model

STATE_FILE = "state.pt"


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings, tokens and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name or "token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def plan_steps(train_cfg: dict, train_samples: int, world_size: int) -> tuple[int, int, int]:
    """(epoch_samples, steps_per_epoch, total optimizer steps)."""
    epoch_samples = train_cfg["epoch_samples"] or train_samples
    global_batch = train_cfg["batch_size"] * world_size * train_cfg["grad_accum"]
    steps_per_epoch = max(1, math.ceil(epoch_samples / global_batch))
    return epoch_samples, steps_per_epoch, steps_per_epoch * train_cfg["epochs"]


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    import logging

    import ray.train.v2._internal.execution.context as train_ctx
    # Ray Train logs every report at INFO under a logger named by its file path: keep it quiet
    logging.getLogger(train_ctx.__file__).setLevel(logging.WARNING)

    tcfg, mcfg = config["train"], config["model_obj"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, tcfg["cpus_per_worker"]))
    device = ray.train.torch.get_device() if tcfg["use_gpu"] else torch.device("cpu")

    tokenizer = get_tokenizer(mcfg.context_length)
    seed_everything(tcfg["seed"])  # identical initial weights on every rank
    model = build_model(mcfg, tokenizer.vocab_size).to(device)
    opt = torch.optim.AdamW(param_groups(model, tcfg["weight_decay"]), lr=tcfg["lr"],
                            betas=tuple(tcfg["betas"]), eps=1e-6)
    epoch_samples, steps_per_epoch, total = plan_steps(tcfg, config["train_samples"], world)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(tcfg["warmup_steps"], total, tcfg["min_lr"] / tcfg["lr"]))

    step, resumed_from = 0, None
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = resumed_from = state["step"]
        if rank == 0:
            print(f"[train] resuming from checkpoint at step {step}/{total} (epoch {state['epoch']})",
                  flush=True)
    # every (rank, resume point) gets its own RNG stream: augmentation never repeats after a resume
    seed_everything(tcfg["seed"] * 1000003 + rank * 7919 + step)

    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if
                                                        device.type == "cuda" else None)
    tracker = None
    if rank == 0 and config.get("mlflow_run_id"):
        from infra.tracking import Tracker
        tracker = Tracker(config["tracking_uri"], config["mlflow_run_id"])

    aug = tcfg["augment"]
    micro = tcfg["grad_accum"]
    spec = LoaderSpec(urls=tuple(config["urls"]), batch_size=tcfg["batch_size"],
                      image_size=mcfg.image_size, context_length=mcfg.context_length,
                      epoch_samples=steps_per_epoch * tcfg["batch_size"] * world * micro,
                      world_size=world, rank=rank, seed=tcfg["seed"] * 31 + step,
                      shuffle_buffer=tcfg["shuffle_buffer"], scale=(aug["scale_min"], aug["scale_max"]),
                      ratio=(aug["ratio_min"], aug["ratio_max"]), color_jitter=aug["color_jitter"],
                      alt_caption_prob=aug["alt_caption_prob"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg["precision"] == "bf16")
    ddp.train()
    if rank == 0:
        print(f"[train] {world} workers, {steps_per_epoch} steps/epoch of {epoch_samples} samples, "
              f"{total} steps, global batch {tcfg['batch_size'] * world * micro}", flush=True)

    def save_and_report(metrics: dict) -> None:
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "step": step,
                            "epoch": step // steps_per_epoch, "model_config": config["model"],
                            "resumed_from": resumed_from},
                           Path(tmp) / STATE_FILE)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)

    t_last, n_last = time.time(), 0
    t_first, n_since_first = None, 0   # throughput over the run, the first (warm-up) step excluded
    loss_acc, loss_n = 0.0, 0
    while step < total:
        epoch = step // steps_per_epoch
        remaining = steps_per_epoch - step % steps_per_epoch
        # the stream yields exactly this epoch's remaining micro-batches for this rank
        ep_spec = LoaderSpec(**{**spec.__dict__, "epoch_samples": remaining * spec.batch_size * world * micro})
        batches = iter(train_loader(ep_spec, tcfg["loader_workers"], epoch))
        for _ in range(remaining):
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for m in range(micro):
                batch = next(batches)
                images, text = batch["image"].to(device), batch["text"].to(device)
                sync = m == micro - 1
                cm = ddp.no_sync() if (world > 1 and not sync) else _null()
                with cm, autocast:
                    img_emb, txt_emb, scale = ddp(images, text)
                    loss = clip_loss(img_emb.float(), txt_emb.float(), scale.float()) / micro
                with cm:
                    loss.backward()
                loss_sum += loss.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["clip_grad"])
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            n_last += tcfg["batch_size"] * world * micro
            if t_first is None:
                t_first = time.time()
            else:
                n_since_first += tcfg["batch_size"] * world * micro
            loss_acc, loss_n = loss_acc + loss_sum, loss_n + 1
            if step % tcfg["log_every"] == 0 or step == total:
                dt = time.time() - t_last
                metrics = {"loss": loss_acc / loss_n, "lr": sched.get_last_lr()[0],
                           "temperature": 1.0 / model.logit_scale.exp().item(),
                           "grad_norm": float(grad_norm), "samples_per_s": n_last / dt,
                           "epoch": step / steps_per_epoch}
                if rank == 0:
                    print(f"[train] step {step}/{total} loss {metrics['loss']:.4f} "
                          f"lr {metrics['lr']:.2e} T {metrics['temperature']:.4f} "
                          f"{metrics['samples_per_s']:.0f} samples/s", flush=True)
                    if tracker:
                        tracker.log_metrics(metrics, step)
                t_last, n_last, loss_acc, loss_n = time.time(), 0, 0.0, 0
            if step % tcfg["checkpoint_every"] == 0 or step == total:
                run_rate = n_since_first / max(time.time() - t_first, 1e-9) if n_since_first else None
                save_and_report({"step": step, "loss": loss_sum, "run_samples_per_s": run_rate})
            if config.get("fail_at_step") == step and rank == 0 and not ckpt:
                raise RuntimeError(f"injected failure at step {step} (fail_at_step, tests only)")
        del batches


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
