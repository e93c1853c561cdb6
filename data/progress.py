"""Progress bars (tqdm) for the long loops a user waits on: sharding, evaluation.

On the driver, tqdm itself. Inside a Ray task or actor, the driver receives the worker's output a
line at a time (a bar's carriage returns would reach it as one growing line, printed at the end),
so there the bar is written as a line of its own every `WORKER_EVERY_S` seconds and at its end.
(Ray's own `tqdm_ray` draws a worker's bar on the driver, but behind a coloured "(pid=...)" that
nothing turns off.) Under `CI=true` without a terminal: no bar at all."""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

WORKER_EVERY_S = 5.0


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Lines:
    """A stream for tqdm that ends each of its refreshes with a newline (and drops empty ones)."""

    def __init__(self, out) -> None:
        self.out = out

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text.strip():
            self.out.write(text.replace("\r", "") + "\n")

    def flush(self) -> None:
        self.out.flush()


def quiet() -> bool:
    return os.environ.get("CI") == "true" and not os.isatty(2)


def in_ray_worker() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def progress_bar(total: Optional[int], desc: str, unit: str = "img") -> Any:
    """A bar counting `unit`s up to `total` (None: a count and a rate, no ETA); a context manager."""
    if quiet():
        return _Quiet()
    from tqdm import tqdm

    if in_ray_worker():
        lines = _Lines(sys.stderr)
        return tqdm(total=total, desc=desc, unit=unit, file=lines, mininterval=WORKER_EVERY_S, ncols=100)
    return tqdm(total=total, desc=desc, unit=unit, mininterval=1.0)
