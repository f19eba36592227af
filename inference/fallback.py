"""The fallback policy: where a model is loaded from (stand-ins only, a
local directory, or the hub), and, when that fails, its stand-in with a
banner that says why and how to fix it, or, with `strict`, the error. No
tab crashes because a model cannot be had."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch

from . import custom, standins
from .errors import ModelUnavailable
from .loading import Loaded, from_pretrained, hub_reachable
from .registry import ModelSpec
from .settings import Settings

log = logging.getLogger(__name__)

HUB_PROBE_EVERY_S = 60.0   # the hub's reachability is asked again after this
# A model served by its stand-in after a failure is tried again at the first
# request after each of these (seconds since the last try, the last one
# repeating): a hub that was down for a minute does not leave the app on
# stand-ins until a restart, and one that stays down is not asked at every
# request.
RETRY_AFTER_S = (30, 60, 120, 300, 600, 1800)

STANDIN_ONLY = ("**{title}: stand-in.** The app was started with `--standin`: this model has "
                "the real architecture, tokenizer kind and special tokens, but tiny weights "
                "that only saw a page of test text: its output says nothing about the real model.")
FELL_BACK = ("**{title} could not be loaded, so this tab is serving its stand-in** (real "
             "architecture, tiny test weights: its output says nothing about the real model). "
             "Why: {reason} Fix: {fix} It is tried again at a later request.")


TRAINED_ON_STANDIN = ("**{key}: fine-tuned from a stand-in.** Its base was {base}'s stand-in "
                      "(the real model could not be had): tiny test weights, so what it "
                      "learned says nothing about the real model.")


class Fallback:
    def __init__(self, settings: Settings, device: torch.device, dtype: torch.dtype):
        self.settings, self.device, self.dtype = settings, device, dtype
        self._hub_ok: tuple[bool, float] | None = None   # (reachable, when probed)
        self._failures: dict[str, int] = {}   # key -> failed loads in a row

    def load(self, spec: ModelSpec, revision: str,
             status: Callable[[str], None] = lambda msg: None, weights: bool = True) -> Loaded:
        """`weights` False: the tokenizer and config only (a remote backend)."""
        s = self.settings
        if spec.directory:
            return self._saved(spec, revision, status, weights)
        if s.standin:
            return self._standin(spec, revision, status, STANDIN_ONLY.format(title=spec.title),
                                 weights)
        local = s.local_dirs.get(spec.key)
        try:
            if local:
                status(f"Loading {spec.title} from its local directory…")
                return self._from(spec, revision, local, f"directory {local}", weights)
            status(f"Downloading or loading {spec.title} ({revision}) from the Hugging Face Hub…")
            loaded = self._from(spec, revision, spec.hub_id, f"hub {spec.hub_id}@{revision}",
                                weights)
            self._failures.pop(spec.key, None)
            return loaded
        except Exception as exc:   # any failure: report it in the tab, never crash
            reason, fix = self._explain(spec, local, exc)
            log.warning("%s could not be loaded: %s", spec.key, reason)
            # Without weights a server computes the model: a stand-in's
            # tokenizer would garble its text.
            if s.strict or not weights:
                raise ModelUnavailable(f"{spec.title} could not be loaded: {reason}", fix) from exc
            loaded = self._standin(spec, revision, status,
                                   FELL_BACK.format(title=spec.title, reason=reason, fix=fix),
                                   weights)
            tries = self._failures[spec.key] = self._failures.get(spec.key, 0) + 1
            loaded.retry_at = time.monotonic() + RETRY_AFTER_S[min(tries, len(RETRY_AFTER_S)) - 1]
            return loaded

    def _saved(self, spec: ModelSpec, revision: str, status, weights: bool) -> Loaded:
        """A model fine-tuned here: from its folder, or a clear refusal (it
        has no stand-in). One trained from a stand-in says so in its banner."""
        status(f"Loading {spec.title} from the data directory…")
        try:
            meta = custom.metadata(spec)
            loaded = self._from(spec, revision, spec.directory, f"fine-tuned here, "
                                f"{spec.directory}", weights, is_standin=meta["standin"])
        except Exception as exc:   # deleted or damaged since it was listed
            log.warning("%s could not be loaded: %s", spec.key, exc)
            raise ModelUnavailable(f"{spec.key} could not be loaded from the data directory.",
                                   "Train it again in the Fine-tune tab.") from exc
        if loaded.is_standin:
            loaded.notice = TRAINED_ON_STANDIN.format(key=spec.key, base=meta["base_title"])
        return loaded

    def _from(self, spec, revision, where, source, weights, is_standin=False) -> Loaded:
        return from_pretrained(spec, revision, where, source, self.settings, self.device,
                               self.dtype, self.hub_offline(), is_standin, weights)

    def _standin(self, spec: ModelSpec, revision: str, status, notice: str,
                 weights: bool) -> Loaded:
        status(f"Preparing the stand-in for {spec.title} (built once, then cached)…")
        root = Path(self.settings.standin_dir) if self.settings.standin_dir else None
        path = standins.ensure(spec.key, self.settings.full_size_standins, root, revision)
        loaded = self._from(spec, revision, str(path), "stand-in, random weights", weights,
                            is_standin=True)
        loaded.notice = notice
        return loaded

    def _explain(self, spec: ModelSpec, local: str | None, exc: Exception) -> tuple[str, str]:
        """What failed and how to fix it. A local directory's path is not
        repeated: the banner is shown to every visitor."""
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ModelUnavailable):
            return exc.reason, exc.fix
        if local:
            if not Path(local).is_dir():
                return ("its local directory does not exist.",
                        "Point TTL_LOCAL_DIRS / --local at a folder made by save_pretrained.")
            return ("its local directory holds no loadable model.",
                    "Re-download the model into it, or remove the --local setting.")
        if self.hub_offline():
            return ("the Hugging Face Hub cannot be reached from this machine (offline, or "
                    "HF_HUB_OFFLINE is set) and the model is not in the local cache.",
                    "Run once with network access to cache it, or download it and pass "
                    f"`--local {spec.key}=DIR`.")
        return (f"{first_line}.", "Check the model id, your network, or pass "
                f"`--local {spec.key}=DIR`.")

    def hub_offline(self) -> bool:
        if self.settings.hub_offline:
            return True
        now = time.monotonic()
        if self._hub_ok is None or now - self._hub_ok[1] > HUB_PROBE_EVERY_S:
            self._hub_ok = (hub_reachable(self.settings.hub_endpoint,
                                          self.settings.hub_probe_timeout), now)
        return not self._hub_ok[0]
