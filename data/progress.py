"""Progress bars (tqdm) for the long loops a user waits on: sharding, evaluation.

On the driver, tqdm itself; inside a Ray task or actor, Ray's tqdm (`ray.experimental.tqdm_ray`):
the worker sends its bar's state and the driver draws it, where a plain tqdm's carriage returns
would reach the driver as one growing line. Under `CI=true` without a terminal: no bar at all."""

from __future__ import annotations

import os
from typing import Any, Optional


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Closing:
    def __init__(self, bar) -> None:
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def quiet() -> bool:
    return os.environ.get("CI") == "true" and not os.isatty(2)


def in_ray_worker() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def progress_bar(total: Optional[int], desc: str, unit: str = "img") -> Any:
    """A bar counting `unit`s up to `total` (None: a count and a rate, no ETA); a context manager."""
    if quiet():
        return _Quiet()
    if in_ray_worker():
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        return _Closing(ray_tqdm(total=total, desc=desc, unit=unit))  # it has no `with` of its own
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=1.0)
