"""What the training loop does after each optimizer step, one small class each: metrics (loss,
learning rate, throughput, skipped samples; printed and logged to MLflow), pictures, the
divergence guard, checkpoints. Each `after_step(run, out)` returns True to stop training.

`run` (training/engine.py `Run`) is the state the loop and its callbacks share; `out` is the
step's result (`StepOut`). Callbacks that make a collective call (all-reduce, Ray Train report)
do it on every rank at the same steps.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from infra.storage import Store
from training.checkpoint.resume import save_and_report
from training.collectives import all_ranks_sum
from training.divergence import DIVERGED, DivergenceGuard


class Callback:
    """A hook of the loop: `scale_loss` sees each micro-batch's loss before its backward (a test's
    injected NaN); `after_step` runs after every optimizer step (True stops the run); `at_end` once."""
    def scale_loss(self, run, loss):
        return loss

    def after_step(self, run, out) -> bool:
        return False

    def at_end(self, run) -> None:
        pass


class SystemMetrics(Callback):
    """CPU, memory, disk, network (and GPU, with pynvml) of rank 0's node, sampled by MLflow's
    system metrics monitor into the run's System metrics tab every `SAMPLE_S` seconds."""
    SAMPLE_S = 10

    def __init__(self, run):
        self.monitor = None
        if run.rank == 0 and run.tracker:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
                self.monitor = SystemMetricsMonitor(run.tracker.run_id, sampling_interval=self.SAMPLE_S,
                                                    resume_logging=True, tracking_uri=run.tracker.uri)
                self.monitor.start()
            except Exception as e:   # tracking never stops training
                print(f"[train] system metrics not logged: {e}", flush=True)
                self.monitor = None

    def at_end(self, run) -> None:
        if not self.monitor:
            return
        self.monitor.finish()
        try:   # the samples since the last publish (all of them, in a run shorter than SAMPLE_S)
            last = self.monitor.aggregate_metrics()
            if last:
                self.monitor.publish_metrics(last)
                self.monitor.mlflow_logger.flush()
        except Exception as e:   # an empty aggregate, a store gone: tracking never stops training
            print(f"[train] last system metrics not logged: {e}", flush=True)


class MetricsLog(Callback):
    """Every `train.log_every` steps (and the last): mean loss, lr, the task's logs, gradient norm,
    samples/s (and tokens/s), samples skipped by the loader on all ranks; rank 0 prints them and
    logs them to MLflow."""

    def __init__(self):
        self.t_last, self.n_last, self.loss_acc, self.loss_n = time.time(), 0, 0.0, 0

    def after_step(self, run, out) -> bool:
        self.n_last += run.global_batch
        self.loss_acc, self.loss_n = self.loss_acc + out.loss, self.loss_n + 1
        if run.step % run.tcfg.log_every and run.step != run.total:
            return False
        metrics = {"loss": self.loss_acc / self.loss_n, "lr": run.strategy.lr, **out.logs, "grad_norm": out.grad_norm,
                   "samples_per_s": self.n_last / (time.time() - self.t_last), "epoch": run.step / run.steps_per_epoch}
        if run.task.sample_tokens:
            metrics["tokens_per_s"] = metrics["samples_per_s"] * run.task.sample_tokens
        metrics["skipped_samples"], metrics["shard_errors"] = all_ranks_sum([run.skipped, run.shard_errors], run.device)
        if run.rank == 0:
            if metrics["skipped_samples"] or metrics["shard_errors"]:
                print(f"[train] step {run.step}: so far {metrics['skipped_samples']:.0f} corrupt samples skipped, "
                      f"{metrics['shard_errors']:.0f} shard reads cut short (all ranks)", flush=True)
            extra = " ".join(f"{k} {v:.4g}" for k, v in out.logs.items())
            print(f"[train] step {run.step}/{run.total} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} {extra} "
                  f"{metrics['samples_per_s']:.0f} samples/s", flush=True)
            if run.tracker:
                run.tracker.log_metrics(metrics, run.step)
        self.t_last, self.n_last, self.loss_acc, self.loss_n = time.time(), 0, 0.0, 0
        return False

    def at_end(self, run) -> None:
        if run.tracker and not run.tracker.flush(force=True):
            print(f"[train] MLflow unavailable at the end of training: {len(run.tracker.pending)} metric values "
                  f"not written", flush=True)


class Pictures(Callback):
    """Rank 0, every `train.picture_every` steps (and the last): the task's picture, to MLflow
    (not under ZeRO-3, whose weights are partitioned)."""

    def after_step(self, run, out) -> bool:
        every = run.tcfg.picture_every
        zero3 = run.strategy.name == "deepspeed" and run.tcfg.deepspeed.zero_stage == 3
        if run.rank == 0 and run.tracker and every and not zero3 and (run.step % every == 0 or run.step == run.total):
            with tempfile.TemporaryDirectory() as tmp:
                picture = run.task.picture(run.strategy.module, out.batch, run.step, Path(tmp))
                if picture:
                    run.tracker.log_artifact(picture, "pictures")
        return False


class Guard(Callback):
    """`train.max_bad_steps` non-finite steps in a row stop every rank (the same verdict: the loss
    is summed over ranks); rank 0 writes why, and the driver raises DivergedError."""

    def __init__(self, run):
        self.guard = DivergenceGuard(run.tcfg.max_bad_steps)

    def bad(self, step: int, ranks_loss: float, grad_norm) -> bool:
        return self.guard.update(step, ranks_loss, grad_norm)

    def after_step(self, run, out) -> bool:
        stop = self.guard.stop_reason(run.step, run.total, run.saved, run.config["storage"],
                                      updates_skipped=run.strategy.name == "ddp")
        if stop and run.rank == 0:
            print(f"[train] {stop}", flush=True)
            Store(run.config["storage"]).write_text(DIVERGED, stop)
        return bool(stop)


class Checkpoints(Callback):
    """Every `train.checkpoint_every` steps (and the last), unless the step was bad: the strategy's
    state and rank 0's train state, reported to Ray Train by every rank. A write that fails leaves
    the previous checkpoint and raises a CheckpointWriteError naming both."""

    def __init__(self):
        self.t_first, self.n_since_first = None, 0   # throughput over the run, the first step excluded

    def after_step(self, run, out) -> bool:
        if self.t_first is None:
            self.t_first = time.time()
        else:
            self.n_since_first += run.global_batch
        if (run.step % run.tcfg.checkpoint_every == 0 or run.step == run.total) and not out.bad:
            rate = self.n_since_first / max(time.time() - self.t_first, 1e-9) if self.n_since_first else None
            save_and_report(run, {"step": run.step, "loss": out.loss, "run_samples_per_s": rate})
        return False
