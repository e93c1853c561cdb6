"""Faults the tests inject into a training run, as a callback outside the loop: present only when
the run's config asks for one (`fail_at_step`, `kill_at_step`, `nan_steps`), and only on a first
attempt (a restart from a checkpoint runs clean).

- `fail_at_step`: rank 0 raises after that step;
- `kill_at_step`: the last rank's process is SIGKILLed after that step;
- `nan_steps` (first, count): rank 0's loss is NaN on those steps.
Before a raise or a kill the fault waits until the newest checkpoint is registered: Ray Train's
controller collects reported checkpoints when it polls the workers (every 2 s), and a worker that
ends before that (a raise can end the process too, in DeepSpeed's teardown) loses them.
"""
from __future__ import annotations

import os
import signal
import time

from training.checkpoint.writes import registered
from training.callbacks import Callback


def injected_faults(config: dict) -> list:
    return [InjectedFaults()] if any(config.get(k) for k in ("fail_at_step", "kill_at_step", "nan_steps")) else []


class InjectedFaults(Callback):
    def scale_loss(self, run, loss):
        nan = run.config.get("nan_steps")
        if nan and run.rank == 0 and nan[0] <= run.step + 1 < nan[0] + nan[1]:
            return loss * float("nan")
        return loss

    def after_step(self, run, out) -> bool:
        if run.restarted:
            return False
        fail = run.config.get("fail_at_step") == run.step and run.rank == 0
        kill = run.config.get("kill_at_step") == run.step and run.rank == run.world - 1
        if fail or kill:
            deadline = time.time() + 120
            while run.saved and not registered(run.config["storage"], run.saved) \
                    and time.time() < deadline:
                time.sleep(0.2)
        if fail:
            raise RuntimeError(f"injected failure at step {run.step} (fail_at_step, tests only)")
        if kill:
            print(f"[train] rank {run.rank}: killing this worker process at step {run.step} "
                  f"(kill_at_step, tests only)", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return False
