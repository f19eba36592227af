"""The engine: the cache of loaded models (kept within a memory budget:
memory.py), the compute thread every forward pass runs on, and the backend
that computes each model. One engine is made at start-up from `Settings` and
handed to every front end, which talk to it through the request API
(api.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

from . import custom, finetune, memory
from .backends import Backend, LlamaCpp, Local, Transformers
from .errors import ModelUnavailable
from .fallback import Fallback
from .loading import Loaded, in_passing_thread, pick_device, pick_dtype
from .registry import ModelSpec
from .remote import Remote
from .settings import Settings
from .worker import Worker

log = logging.getLogger(__name__)

BACKENDS = {b.name: b for b in (Local, LlamaCpp, Transformers, Remote)}


# A model's last checkpoints kept side by side, so that a presenter going
# back and forth between two is not made to wait for a reload each time.
CHECKPOINTS_KEPT = 2


class Engine:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.device = pick_device(self.settings.device)
        self.dtype = pick_dtype(self.settings.dtype, self.device)
        self.worker = Worker(inline=self.settings.zero_gpu)
        self.fallback = Fallback(self.settings, self.device, self.dtype)
        self.backends: dict[str, Backend] = {name: cls(self.settings)
                                             for name, cls in BACKENDS.items()}
        mb = self.settings.memory_budget_mb
        self.budget = mb * memory.MB if mb else memory.default_budget()
        # (key, revision) -> model, the least recently used first.
        self._cache: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._guard = threading.Lock()     # the cache and the models' users
        # One load at a time: room is made against what is resident, and a
        # small machine loads two models no faster at once. A model already
        # loaded is served without waiting for this.
        self._loading = threading.Lock()
        # Fine-tuning jobs (finetune.py), one at a time.
        self.jobs = finetune.Jobs()

    def spec(self, key) -> ModelSpec:
        """The entry for `key`: the registry's, or a model fine-tuned here
        (`custom/<name>`, kept in the data directory). KeyError otherwise."""
        return custom.lookup(self.settings.data_dir, key)

    def models(self, *tasks: str) -> list[ModelSpec]:
        """The models serving `tasks`, the registry's then the custom ones."""
        return custom.models(self.settings.data_dir, *tasks)

    def backend_for(self, key: str) -> Backend:
        return self.backends[self.settings.backend_for(key, self.device)]

    def load(self, key: str, revision: str | None = None,
             status: Callable[[str], None] = lambda msg: None) -> Loaded:
        """The loaded model for `key` at `revision`, loading it on first use.
        Raises `ModelUnavailable` with an actionable message."""
        return self._get(key, revision, status, hold=False)

    @contextmanager
    def hold(self, key: str, revision: str | None = None,
             status: Callable[[str], None] = lambda msg: None) -> Iterator[Loaded]:
        """The loaded model, kept while the block runs: a model in use is
        never let go to make room for another."""
        m = self._get(key, revision, status, hold=True)
        try:
            yield m
        finally:
            with self._guard:
                m.users -= 1

    def _get(self, key, revision, status, hold: bool) -> Loaded:
        try:
            spec = self.spec(key)
        except KeyError as exc:
            raise ModelUnavailable(str(exc).strip("'\"")) from None
        revision = revision or spec.revision
        if revision not in spec.revisions:
            raise ModelUnavailable(f"{spec.title} has no checkpoint {revision!r}.",
                                   f"Choose one of: {', '.join(spec.revisions)}.")
        name = (key, revision)
        if m := self._cached(name, hold):
            return m
        with self._loading:   # two users asking for the same model load it once
            if m := self._cached(name, hold):
                return m
            backend = self.backend_for(key)
            need = self.load_cost(key)
            self._make_room(spec, need, status)

            def load() -> Loaded:
                m = self.fallback.load(spec, revision, status, backend.loads_weights)
                m.backend, m.worker = backend, self.worker
                backend.prepare(m)
                m.resident = backend.resident(m)
                return m

            m = in_passing_thread(load)
            with self._guard:
                self._cache[name] = m
                m.users += hold
            return m

    def _cached(self, name: tuple[str, str], hold: bool) -> Loaded | None:
        with self._guard:
            m = self._cache.get(name)
            if m and m.retry_at and time.monotonic() >= m.retry_at and not m.users:
                del self._cache[name]   # a stand-in standing in after a failure: try again
                return None
            if m:
                self._cache.move_to_end(name)
                m.users += hold
            return m

    def load_cost(self, key: str) -> int:
        """Bytes a load of `key` takes at its peak (memory.py); 0 when a
        server holds its weights."""
        if not self.backend_for(key).loads_weights:
            return 0
        spec = self.spec(key)
        cost = (memory.folder_load_bytes(spec.directory) if spec.directory
                else memory.load_bytes(key, self._full_size))
        return self.backend_for(key).load_cost(spec, cost)

    @property
    def _full_size(self) -> bool:
        """Whether loads bring full-size models (anything but tiny stand-ins)."""
        return not self.settings.standin or self.settings.full_size_standins

    def _make_room(self, spec, need: int, status) -> None:
        """Let go of the least recently used models not in use until `need`
        more bytes fit the budget; a third checkpoint of one model goes
        first. A model that could never fit is refused."""
        if need > self.budget:
            raise ModelUnavailable(
                f"{spec.title} needs about {need // memory.MB:,} MB to load; the memory "
                f"budget is {self.budget // memory.MB:,} MB.",
                "Raise TTL_MEMORY_BUDGET (MB) on a machine with more memory.")
        with self._guard:
            idle = [n for n, m in self._cache.items() if not m.users]   # least recent first
            same = [n for n in idle if n[0] == spec.key]
            gone = same[:max(0, len(same) + 1 - CHECKPOINTS_KEPT)]   # room for the new one
            resident = self.resident() - sum(self._cache[n].resident for n in gone)
            for n in idle:
                if resident + need <= self.budget:
                    break
                if n not in gone:
                    gone.append(n)
                    resident -= self._cache[n].resident
            titles = ", ".join(f"{self._cache[n].spec.title} ({n[1]})" for n in gone)
            for n in gone:
                del self._cache[n]
        if gone:
            status(f"Letting go of {titles} to stay within the memory budget…")
            log.info("let go of %s: %d MB kept, %d MB to load, budget %d MB", titles,
                     self.resident() // memory.MB, need // memory.MB, self.budget // memory.MB)
            memory.give_back()

    def resident(self) -> int:
        """Bytes the kept models' tensors hold."""
        return sum(m.resident for m in list(self._cache.values()))

    def loaded(self) -> list[Loaded]:
        return list(self._cache.values())

    def unload(self, key: str) -> None:
        with self._guard:
            for name in [n for n in self._cache if n[0] == key]:
                del self._cache[name]
        memory.give_back()
