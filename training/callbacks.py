"""What the training loop does after each optimizer step, one small class each: metrics (loss,
learning rate, throughput, skipped samples; printed and logged to MLflow), pictures, the
divergence guard, checkpoints. Each `after_step(run, out)` returns True to stop training.

`run` (training/engine.py `Run`) is the state the loop and its callbacks share; `out` is the
step's result (`StepOut`). Callbacks that make a collective call (all-reduce, Ray Train report)
do it on every rank at the same steps.
"""

from __future__ import annotations

import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path

from infra.storage import Store
from training.checkpoint.resume import save_and_report
from training.collectives import all_ranks_sum
from training.divergence import DIVERGED, DivergenceGuard
from training.pace import Pace


class Callback:
    """A hook of the loop: `scale_loss` sees each micro-batch's loss before its backward (a test's
    injected NaN); `after_step` runs after every optimizer step (True stops the run); `at_end` once
    after the last step; `close` whenever the loop ends (the last step, a stop, an error)."""

    def scale_loss(self, run, loss):
        return loss

    def after_step(self, run, out) -> bool:
        return False

    def at_end(self, run) -> None:
        pass

    def close(self, run) -> None:
        pass


class OffThread:
    """Calls run in order on one background thread (MLflow writes, off the training thread)."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="mlflow-log", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (call := self.calls.get()) is not None:
            fn, args = call
            try:
                fn(*args)
            except Exception as e:  # tracking never stops training
                print(f"[train] MLflow write failed: {e}", flush=True)

    def submit(self, fn, *args) -> None:
        self.calls.put((fn, args))

    def close(self) -> None:
        """Wait for every call submitted so far."""
        if self.thread.is_alive():
            self.calls.put(None)
            self.thread.join()


class Throughput:
    """Step times of this worker: samples/s in the steady state (after `WARMUP` steps: the FLOP
    count (eager), the loader's start and, compiled, the compilation in the second step), and the
    compile time (the warm-up steps' time above the steady state's)."""

    WARMUP = 2

    def __init__(self) -> None:
        self.times: list[float] = [time.time()]

    def tick(self) -> None:
        self.times.append(time.time())

    def steady_step_s(self):
        steps = [b - a for a, b in zip(self.times[self.WARMUP :], self.times[self.WARMUP + 1 :])]
        return statistics.fmean(steps) if steps else None

    def samples_per_s(self, global_batch: int):
        step = self.steady_step_s()
        return global_batch / step if step else None

    def compile_s(self):
        step = self.steady_step_s()
        if not step or len(self.times) <= self.WARMUP:
            return None
        return max(0.0, self.times[self.WARMUP] - self.times[0] - self.WARMUP * step)


class SystemMetrics(Callback):
    """CPU, memory, disk, network (and GPU, with pynvml) of rank 0's node, sampled by MLflow's
    system metrics monitor into the run's System metrics tab every `SAMPLE_S` seconds."""

    SAMPLE_S = 10

    def __init__(self, run):
        self.monitor = None
        if run.rank == 0 and run.tracker:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self.monitor = SystemMetricsMonitor(
                    run.tracker.run_id,
                    sampling_interval=self.SAMPLE_S,
                    resume_logging=True,
                    tracking_uri=run.tracker.uri,
                )
                self.monitor.start()
            except Exception as e:  # tracking never stops training
                print(f"[train] system metrics not logged: {e}", flush=True)
                self.monitor = None

    def at_end(self, run) -> None:
        if not self.monitor:
            return
        self.monitor.finish()
        try:  # the samples since the last publish (all of them, in a run shorter than SAMPLE_S)
            last = self.monitor.aggregate_metrics()
            if last:
                self.monitor.publish_metrics(last)
                self.monitor.mlflow_logger.flush()
        except Exception as e:  # an empty aggregate, a store gone: tracking never stops training
            print(f"[train] last system metrics not logged: {e}", flush=True)


def utilisation(run, samples_per_s: float) -> dict:
    """Model FLOP/s of all workers and their utilisation of the peak (MFU), at `samples_per_s`."""
    if not run.flops_per_sample:
        return {}
    model_flops = samples_per_s * run.flops_per_sample
    out = {"model_tflops_per_s": model_flops / 1e12}
    if run.peak_flops:
        out["mfu"] = model_flops / (run.peak_flops * run.world)
    return out


class MetricsLog(Callback):
    """Every `train.log_every` steps (and the last): mean loss, lr, the task's logs, gradient norm,
    samples/s (and tokens/s), model FLOP/s and MFU, samples skipped by the loader on all ranks;
    rank 0 prints them and hands them to MLflow on a background thread."""

    def __init__(self):
        self.t_last, self.n_last, self.loss_acc, self.loss_n = time.time(), 0, 0.0, 0
        self.writer = None
        self.logged_through = None  # a resumed run: the last step MLflow already holds
        self.pace = Pace(self.t_last)  # this worker group's start (a restart starts again)

    def _already_logged(self, run) -> int:
        """After a restart or a rerun, the steps up to the crash were logged once already: the last
        logged step of this run's `loss` (0 on a first attempt), so the replay is not logged twice."""
        if self.logged_through is None:
            self.logged_through = 0
            if run.restarted:
                try:
                    history = run.tracker.client.get_metric_history(run.tracker.run_id, "loss")
                    self.logged_through = max((m.step for m in history), default=0)
                except Exception as e:  # tracking never stops training
                    print(f"[train] MLflow history not read ({e}): replayed steps may be logged twice", flush=True)
        return self.logged_through

    def after_step(self, run, out) -> bool:
        self.n_last += run.global_batch
        self.loss_acc, self.loss_n = self.loss_acc + out.loss, self.loss_n + 1
        if run.step % run.tcfg.log_every and run.step != run.total:
            return False
        logs = {k: float(v) for k, v in out.logs.items()}  # the task's tensors, read now
        metrics = {
            "loss": self.loss_acc / self.loss_n,
            "lr": run.strategy.lr,
            **logs,
            "grad_norm": out.grad_norm,
            "samples_per_s": self.n_last / (time.time() - self.t_last),
            "epoch": run.step / run.steps_per_epoch,
        }
        if run.task.sample_tokens:
            metrics["tokens_per_s"] = metrics["samples_per_s"] * run.task.sample_tokens
        metrics.update(utilisation(run, metrics["samples_per_s"]))
        if run.flops_per_sample:
            metrics["gflops_per_sample"] = run.flops_per_sample / 1e9
        metrics["skipped_samples"], metrics["shard_errors"] = all_ranks_sum([run.skipped, run.shard_errors], run.device)
        if run.rank == 0:
            if metrics["skipped_samples"] or metrics["shard_errors"]:
                print(
                    f"[train] step {run.step}: so far {metrics['skipped_samples']:.0f} corrupt samples skipped, "
                    f"{metrics['shard_errors']:.0f} shard reads cut short (all ranks)",
                    flush=True,
                )
            head, clock = self.pace.at(run.step, run.total, time.time())
            extra = "".join(f" {k} {v:.4g}" for k, v in logs.items())
            mfu = f" MFU {metrics['mfu']:.1%}" if "mfu" in metrics else ""
            print(
                f"[train] {head} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e}{extra} | "
                f"{metrics['samples_per_s']:.0f} samples/s{mfu} | {clock}",
                flush=True,
            )
            if run.tracker and run.step > self._already_logged(run):
                self.writer = self.writer or OffThread()
                self.writer.submit(run.tracker.log_metrics, metrics, run.step)
        run.logged = (run.step, metrics["loss"])
        self.t_last, self.n_last, self.loss_acc, self.loss_n = time.time(), 0, 0.0, 0
        return False

    def close(self, run) -> None:
        if self.writer:
            self.writer.close()
        if run.tracker and not run.tracker.flush(force=True):
            print(
                f"[train] MLflow unavailable at the end of training: {len(run.tracker.pending)} metric values "
                f"not written",
                flush=True,
            )


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
        stop = self.guard.stop_reason(
            run.step, run.total, run.saved, run.config.storage, updates_skipped=run.strategy.name == "ddp"
        )
        if stop and run.rank == 0:
            print(f"[train] {stop}", flush=True)
            Store(run.config.storage).write_text(DIVERGED, stop)
        return bool(stop)


class Checkpoints(Callback):
    """Every `train.checkpoint_every` steps (and the last), unless the step was bad: the strategy's
    state and rank 0's train state, reported to Ray Train by every rank. A write that fails leaves
    the previous checkpoint and raises a CheckpointWriteError naming both."""

    def __init__(self):
        self.clock = Throughput()

    def after_step(self, run, out) -> bool:
        self.clock.tick()
        if (run.step % run.tcfg.checkpoint_every == 0 or run.step == run.total) and not out.bad:
            rate = self.clock.samples_per_s(run.global_batch)
            # the loss of the step's log line and MLflow (the mean since the last one) where the
            # step was logged, so the run's final loss is the one its curve ends at
            loss = run.logged[1] if run.logged and run.logged[0] == run.step else out.loss
            save_and_report(
                run,
                {
                    "step": run.step,
                    "loss": loss,
                    "run_samples_per_s": rate,
                    "compile_s": self.clock.compile_s() if run.tcfg.compile else None,
                    "flops_per_sample": run.flops_per_sample,
                    **(utilisation(run, rate) if rate else {}),
                },
            )
        return False
