"""A diverging loss stops the run: `train.max_bad_steps` optimizer steps in a row whose loss (on
any rank) or gradient norm is NaN or infinite end training with a message naming the steps and the
last good checkpoint.

The loss is summed over the ranks before the verdict, so every rank sees the same one and they
stop together. Under DDP a bad step's update is skipped (the weights stay the last good step's);
DeepSpeed has applied its update by then. No checkpoint is written during a run of bad steps, so
the newest checkpoint is a good one."""

from __future__ import annotations

import math
from typing import Optional

from training.checkpoint.writes import EXPERIMENT, dir_name

DIVERGED = "diverged.txt"  # written by rank 0 when training stopped on a diverging loss


class DivergedError(RuntimeError):
    """Training stopped on a run of non-finite losses; the last good checkpoint is kept."""


class DivergenceGuard:
    def __init__(self, max_bad_steps: int):
        self.max_bad = max_bad_steps
        self.run = 0  # bad steps in a row
        self.first: Optional[int] = None  # the first of them
        self.what = ""

    def update(self, step: int, loss: float, grad_norm: Optional[float]) -> bool:
        """Record optimizer step `step` (1-based) with the loss summed over ranks and the gradient
        norm (None: unknown); True when the step was bad."""
        if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
            self.run, self.first = 0, None
            return False
        self.run += 1
        self.first = self.first or step
        self.what = f"loss was {loss}" if not math.isfinite(loss) else f"gradient norm was {grad_norm}"
        return True

    def stop_reason(
        self, step: int, total: int, saved: Optional[int], storage: str, updates_skipped: bool
    ) -> Optional[str]:
        """Why training must stop after step `step` (max_bad_steps reached, or the run ends on a
        bad step), or None to go on."""
        if not self.run or (self.run < self.max_bad and step < total):
            return None

        steps = f"step {step}" if self.first == step else f"steps {self.first}-{step}"
        weights = (
            "those steps did not update the weights" if updates_skipped else "DeepSpeed applied those steps' updates"
        )
        if saved:
            where = f"{storage.rstrip('/')}/{EXPERIMENT}/{dir_name(saved)}"
            kept = (
                f"the last good checkpoint (step {saved}) is kept: rerun from it with other settings, e.g. "
                f"--set train.lr=<lower> --set train.resume_from={where}"
            )
        else:
            kept = "no checkpoint was written before it: rerun with other settings (e.g. a lower train.lr)"
        return (
            f"training diverged: the {self.what} on {self.run} step(s) in a row ({steps}; "
            f"train.max_bad_steps {self.max_bad}); {weights}; {kept}"
        )
