"""The engine: the cache of loaded models (at most one revision per key),
the compute thread every forward pass runs on, and the backend that
computes each model. One engine is made at start-up from `Settings` and
handed to every front end, which talk to it through the request API
(api.py)."""

from __future__ import annotations

import threading
from typing import Callable

from .backends import Backend, Local, Transformers
from .errors import ModelUnavailable
from .fallback import Fallback
from .loading import Loaded, in_passing_thread, pick_device, pick_dtype
from .registry import get_spec
from .remote import Remote
from .settings import Settings
from .worker import Worker

BACKENDS = {b.name: b for b in (Local, Transformers, Remote)}


class Engine:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.device = pick_device(self.settings.device)
        self.dtype = pick_dtype(self.settings.dtype, self.device)
        self.worker = Worker(inline=self.settings.zero_gpu)
        self.fallback = Fallback(self.settings, self.device, self.dtype)
        self.backends: dict[str, Backend] = {name: cls(self.settings)
                                             for name, cls in BACKENDS.items()}
        self._cache: dict[str, Loaded] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def backend_for(self, key: str) -> Backend:
        return self.backends[self.settings.backend_for(key, self.device)]

    def load(self, key: str, revision: str | None = None,
             status: Callable[[str], None] = lambda msg: None) -> Loaded:
        """The loaded model for `key` at `revision`, loading it on first use.
        Raises `ModelUnavailable` with an actionable message."""
        try:
            spec = get_spec(key)
        except KeyError as exc:
            raise ModelUnavailable(str(exc).strip("'\"")) from None
        revision = revision or spec.revision
        if revision not in spec.revisions:
            raise ModelUnavailable(f"{spec.title} has no checkpoint {revision!r}.",
                                   f"Choose one of: {', '.join(spec.revisions)}.")
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:   # two users asking for the same model load it once
            cached = self._cache.get(key)
            if cached and cached.revision == revision:
                return cached
            self._cache.pop(key, None)   # free the previous checkpoint first
            backend = self.backend_for(key)

            def load() -> Loaded:
                m = self.fallback.load(spec, revision, status, backend.loads_weights)
                m.backend, m.worker = backend, self.worker
                backend.prepare(m)
                return m

            self._cache[key] = loaded = in_passing_thread(load)
            return loaded

    def loaded(self) -> list[Loaded]:
        return list(self._cache.values())

    def unload(self, key: str) -> None:
        self._cache.pop(key, None)
