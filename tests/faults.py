"""Faults the tests inject into a training run: a training callback (training/callbacks.py) handed
to run_training / build_workflow as `callbacks=[faults(...)]`, active only on a first attempt (a
restart from a checkpoint runs clean). The product has no fault hooks of its own.

- `fail_at_step`: rank 0 raises after that step;
- `kill_at_step`: the last rank's process is SIGKILLed after that step;
- `segv_at_step`: the last rank's process dies of a real SIGSEGV (a read of address 0) after that step;
- `nan_steps` (first, count): rank 0's loss is NaN on those steps.
Before a raise or a kill the fault waits until the newest checkpoint is registered: Ray Train's
controller collects reported checkpoints when it polls the workers (every 2 s), and a worker that
ends before that (a raise can end the process too, in DeepSpeed's teardown) loses them.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Optional

from training.callbacks import Callback
from training.checkpoint.writes import registered


def faults(
    fail_at_step: Optional[int] = None,
    kill_at_step: Optional[int] = None,
    nan_steps: Optional[tuple[int, int]] = None,
    segv_at_step: Optional[int] = None,
) -> "InjectedFaults":
    """The callback; this module travels to the Ray workers by value (tests/ is not on their path)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return InjectedFaults(fail_at_step, kill_at_step, nan_steps, segv_at_step)


class InjectedFaults(Callback):
    def __init__(self, fail_at_step=None, kill_at_step=None, nan_steps=None, segv_at_step=None):
        self.fail_at_step, self.kill_at_step, self.nan_steps = fail_at_step, kill_at_step, nan_steps
        self.segv_at_step = segv_at_step

    def scale_loss(self, run, loss):
        nan = self.nan_steps
        if nan and run.rank == 0 and nan[0] <= run.step + 1 < nan[0] + nan[1]:
            return loss * float("nan")
        return loss

    def after_step(self, run, out) -> bool:
        if run.restarted:
            return False
        fail = self.fail_at_step == run.step and run.rank == 0
        kill = self.kill_at_step == run.step and run.rank == run.world - 1
        segv = self.segv_at_step == run.step and run.rank == run.world - 1
        if fail or kill or segv:
            deadline = time.time() + 120
            while run.saved and not registered(run.config.storage, run.saved) and time.time() < deadline:
                time.sleep(0.2)
        if fail:
            raise RuntimeError(f"injected failure at step {run.step} (fail_at_step, tests only)")
        if kill:
            print(
                f"[train] rank {run.rank}: killing this worker process at step {run.step} (kill_at_step, tests only)",
                flush=True,
            )
            os.kill(os.getpid(), signal.SIGKILL)
        if segv:
            import ctypes

            ctypes.string_at(0)  # a native crash: SIGSEGV, faulthandler's dump, the signal re-raised
        return False
