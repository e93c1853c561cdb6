"""Where a training run is, as its console line says it: the wall time, the step of the total,
the time since the worker group started and the ETA."""

from __future__ import annotations

import time
from collections import deque

from infra.clock import duration

PACE_LINES = 10  # the ETA's pace: of the last this many log intervals


class Pace:
    def __init__(self, started: float):
        self.started = started
        self.recent: deque[tuple[int, float]] = deque(maxlen=PACE_LINES + 1)  # (step, time) of log lines

    def at(self, step: int, total: int, now: float) -> tuple[str, str]:
        """`05:41:12 step 520/975 (53%)` and `elapsed 6m12s ETA 5m25s`: the wall time, where the run
        is, the time since this worker group started, and the remaining steps at the pace of the last
        PACE_LINES log intervals (not the first steps' compile and loader start; a slow spell,
        another job on the machine, ages out). No ETA on the first line: no pace yet."""
        head = f"{time.strftime('%H:%M:%S', time.localtime(now))} step {step}/{total} ({step / total:.0%})"
        self.recent.append((step, now))
        step0, t0 = self.recent[0]
        eta = f" ETA {duration((now - t0) / (step - step0) * (total - step))}" if step > step0 else ""
        return head, f"elapsed {duration(now - self.started)}{eta}"
