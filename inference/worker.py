"""The engine's one compute thread: every forward pass of every model runs on
it, the batched decoding of each model (decoder.py) and the one-off passes
(classification, perplexity) alike.

Why one thread: torch's OpenMP runtime keeps a team of worker threads for
each thread that has run parallel work, and when the live teams outnumber
the cores it stops spinning between operations and puts its threads to
sleep. On the 2-vCPU machine an int8 TeenyTinyLlama-160m decode step took
12 ms from the only thread that had run torch and 24 ms from a second one
(docs/performance.md). A small CPU gains nothing from running two forward
passes at once anyway; on a GPU one thread feeding it is the usual design.

The thread runs while there is work and ends after `linger_s` without any,
so an idle app holds no thread and no OpenMP team, while requests that come
one after another do not each pay for a new thread and a new team.

`inline=True` (a ZeroGPU Space, where only a request's own `spaces.GPU`
call holds the GPU) runs everything on the caller's thread instead: jobs at
once, and decoding driven by whoever waits for a token (`take`).
"""

from __future__ import annotations

import atexit
import threading
from collections import deque
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Callable, Protocol, TypeVar

import torch

T = TypeVar("T")


class Turns(Protocol):
    """Something with work in steps: the worker calls `turn()` while `busy`."""
    busy: bool

    def turn(self) -> None: ...


class Worker:
    def __init__(self, name: str = "engine-worker", linger_s: float = 2.0, inline: bool = False):
        self.name, self.linger_s, self.inline = name, linger_s, inline
        self._guard = threading.Condition()
        self._pumping = threading.Lock()   # inline: one caller drives the turns at a time
        self._jobs: deque[tuple[Callable, Future]] = deque()
        self._active: dict[Turns, None] = {}   # an ordered set: turns go round in order
        self._thread: threading.Thread | None = None
        self._in_job = False
        self._closing = False
        # A thread still inside torch when the interpreter exits aborts the
        # process ("terminate called without an active exception").
        atexit.register(self.stop)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker (under inference mode) and return its
        result or raise its error. Jobs run between decode steps, first come
        first served."""
        if self.inline or threading.current_thread() is self._thread:
            with torch.inference_mode():
                return fn()
        fut: Future = Future()
        with self._guard:
            self._jobs.append((fn, fut))
            self._start()
            self._guard.notify()
        return fut.result()

    def wake(self, turns: Turns) -> None:
        """`turns` has work: give it turns until it is no longer busy."""
        with self._guard:
            self._active[turns] = None
            if not self.inline:
                self._start()
                self._guard.notify()

    def take(self, items: SimpleQueue):
        """The next item of `items`, a queue that turns on this worker fill
        (a request's tokens). Inline, the caller does the turns itself."""
        while self.inline and items.empty():
            self.pump(until=lambda: not items.empty())
        return items.get()

    def pump(self, until: Callable[[], bool] = lambda: False) -> None:
        """Inline: one turn for everything with work, on the caller's thread
        (also how a stopped request leaves its batch: nobody else would run
        the turn that drops it)."""
        with self._pumping, torch.inference_mode():
            with self._guard:   # forget what is done: a replaced model is let go
                self._active = {t: None for t in self._active if t.busy}
                active = list(self._active)
            if not until():
                for t in active:
                    t.turn()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread after the turn or job it is in (at exit)."""
        with self._guard:
            self._closing, thread = True, self._thread
            self._guard.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """The thread is alive (working, or lingering for more work)."""
        return self._thread is not None

    @property
    def idle(self) -> bool:
        """No job waiting or running, and no decoder with requests."""
        with self._guard:
            return not (self._jobs or self._in_job or any(t.busy for t in self._active))

    def _start(self) -> None:   # with self._guard held
        if self._closing:
            raise RuntimeError("The app is shutting down.")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._guard:
                self._active = {t: None for t in self._active if t.busy}
                if not self._jobs and not self._active and not self._closing:
                    self._guard.wait(self.linger_s)   # woken by call(), wake() or stop()
                    self._active = {t: None for t in self._active if t.busy}
                if self._closing or (not self._jobs and not self._active):
                    self._thread = None
                    return
                job = self._jobs.popleft() if self._jobs else None
                self._in_job = job is not None
                active = list(self._active)
            self._work(job, active)
            job = active = None   # nothing of it kept while lingering (see _work)

    def _work(self, job, active: list) -> None:
        """One job and one turn of everything active. A method of its own so
        that nothing of the job outlives it while the thread lingers: a
        finished job's locals would keep a model let go (engine.py) alive."""
        with torch.inference_mode():
            if job is not None:
                fn, fut = job
                try:
                    fut.set_result(fn())
                except BaseException as exc:   # the caller gets it; the worker goes on
                    fut.set_exception(exc)
                self._in_job = False
            for t in active:
                t.turn()
