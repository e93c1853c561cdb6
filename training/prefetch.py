"""Read ahead of the training step: a thread pulls the next micro-batches from the loader while the
step computes, across epoch boundaries (the next epoch's loader workers start before this
epoch's last step). An error of the loader is raised in the training thread, at the batch where
it happened."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

_END = object()


class Prefetcher:
    def __init__(self, source: Iterator, depth: int):
        self.source, self.depth = source, depth
        self.stop = threading.Event()
        self.thread = None
        if depth:
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.thread = threading.Thread(target=self._fill, name="prefetch", daemon=True)
            self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            for item in self.source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # raised again in the training thread
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self):
        if self.thread is None:
            return next(self.source)
        item = self.queue.get()
        if item is _END:
            self.queue.put(_END)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading ahead (the thread ends at its next batch; the loader's workers with it)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
