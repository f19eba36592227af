"""Micro-batching: single requests to the same classifier that arrive
together are padded and run as one forward pass instead of one by one.

The first request of a batch waits a few milliseconds for company, then
takes everything that is pending (up to `max_batch`). Requests arriving
while a batch runs form the next one.
"""

from __future__ import annotations

import threading
from collections import deque
import time
from concurrent.futures import Future
from typing import Callable, Sequence


class MicroBatcher:
    def __init__(self, run: Callable[[Sequence], list], wait_s: float = 0.005,
                 max_batch: int = 16):
        self._run, self.wait_s, self.max_batch = run, wait_s, max_batch
        self._guard = threading.Lock()     # protects _pending
        self.busy = threading.Lock()       # held while a batch runs
        self._pending: list[tuple[object, Future]] = []
        # The latest batch sizes, for tests and logs (bounded: the app runs for days).
        self.sizes: deque[int] = deque(maxlen=1000)

    @property
    def pending(self) -> int:
        with self._guard:
            return len(self._pending)

    def submit(self, item):
        """Run `item` (in a batch) and return its result, or raise its error."""
        fut: Future = Future()
        with self._guard:
            self._pending.append((item, fut))
            leader = len(self._pending) == 1
        if leader:
            time.sleep(self.wait_s)
            with self.busy:
                while True:
                    with self._guard:
                        batch = self._pending[:self.max_batch]
                        del self._pending[:len(batch)]
                    if not batch:
                        break
                    self._run_batch(batch)
        return fut.result()

    def _run_batch(self, batch) -> None:
        self.sizes.append(len(batch))
        try:
            results = self._run([item for item, _ in batch])
        except BaseException as exc:   # every waiter gets the error, none hangs
            for _, fut in batch:
                fut.set_exception(exc)
            return
        for (_, fut), result in zip(batch, results):
            fut.set_result(result)
