"""Loading: lazy, cached, thread-safe; device and dtype placement; the
fallback to stand-ins with a notice saying why.

The `Engine` is the only place in the app that holds models. One engine is
made at start-up from `Settings` and handed to every tab.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlparse

import torch

from . import fastpath, faults, standins
from .registry import ModelSpec, get_spec
from .worker import Worker

T = TypeVar("T")

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


class ModelUnavailable(RuntimeError):
    """A model could not be loaded; the message says what failed and how to
    fix it, and is meant to be shown as it is."""

    def __init__(self, reason: str, fix: str = ""):
        super().__init__(f"{reason} {fix}".strip())
        self.reason, self.fix = reason, fix


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_local_dirs(text: str) -> dict[str, str]:
    """'key=dir,key=dir' (as in TTL_LOCAL_DIRS or --local) to a dict."""
    out = {}
    for item in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        key, sep, path = item.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"Expected KEY=DIR, got {item!r}")
        get_spec(key.strip())   # unknown keys fail at start, not at first use
        out[key.strip()] = path.strip()
    return out


@dataclass(frozen=True)
class Settings:
    """What the operator chose at start (flags or environment)."""
    device: str = "auto"
    dtype: str = "auto"
    standin: bool = False        # serve stand-ins only
    strict: bool = False         # never fall back to a stand-in
    local_dirs: Mapping[str, str] = field(default_factory=dict)
    standin_dir: str | None = None
    full_size_standins: bool = False
    hub_probe_timeout: float = 3.0
    # 4-bit (bitsandbytes NF4) loading of the adapter models, as in the tweet
    # adapter's QLoRA training (seed 002). CUDA only; elsewhere it is ignored.
    load_in_4bit: bool = False
    fast: str = "auto"          # CPU fast path: auto | off | int8 | bf16 (fastpath.py)
    # A ZeroGPU Space (it sets SPACES_ZERO_GPU): the GPU exists only inside a
    # request's `spaces.GPU` call, so the engine computes on the caller's
    # thread (worker.py) and the app loads its default models at start.
    zero_gpu: bool = False

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = dict(
            device=os.environ.get("TTL_DEVICE", "auto"),
            dtype=os.environ.get("TTL_DTYPE", "auto"),
            standin=_env_flag("TTL_STANDIN"),
            strict=_env_flag("TTL_STRICT"),
            local_dirs=parse_local_dirs(os.environ.get("TTL_LOCAL_DIRS", "")),
            standin_dir=os.environ.get("TTL_STANDIN_DIR") or None,
            load_in_4bit=_env_flag("TTL_4BIT"),
            fast=os.environ.get("TTL_FAST", "auto").strip().lower() or "auto",
            zero_gpu="SPACES_ZERO_GPU" in os.environ,
        )
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.fast not in fastpath.MODES:
            raise ValueError(f"fast must be one of {fastpath.MODES}, got {self.fast!r}")


@dataclass
class Loaded:
    spec: ModelSpec
    revision: str
    model: torch.nn.Module
    tokenizer: object
    source: str                  # where the weights came from, for people
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    is_standin: bool = False
    notice: str | None = None    # markdown for the tab's banner
    fast: str = "off"            # the CPU fast path's road (fastpath.py)
    # The engine's compute thread: every forward pass runs there (worker.py).
    worker: Worker = field(default_factory=Worker, repr=False)
    # Per-model helpers that live as long as the model (e.g. a micro-batcher).
    extras: dict = field(default_factory=dict, repr=False)

    def run(self, fn: Callable[[], T]) -> T:
        """`fn()` (a forward pass on this model) run on the compute thread."""
        return self.worker.call(fn)

    @property
    def label(self) -> str:
        parts = [self.device.type, str(self.dtype).removeprefix("torch.")]
        parts += ["int8 weights"] if self.fast == "int8" else []
        parts += ["stand-in"] if self.is_standin else []
        return " · ".join(parts)


def in_passing_thread(fn: Callable[[], T]) -> T:
    """`fn()` run on a thread that ends with it. Loading runs torch's parallel
    code, and the OpenMP team a thread gets for that lives as long as the
    thread: left in a long-lived server thread, it would slow the compute
    thread down (worker.py says why). Loading can take minutes (a download),
    so it does not run on the compute thread itself. The caller's context
    variables go along (Gradio finds the progress bar to update through them)."""
    out: list = []
    context = contextvars.copy_context()

    def run():
        try:
            out.append((True, context.run(fn)))
        except BaseException as exc:
            out.append((False, exc))

    t = threading.Thread(target=run, name="engine-load", daemon=True)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def pick_device(choice: str) -> torch.device:
    if choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if DTYPES.get(choice):
        return DTYPES[choice]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def hub_reachable(timeout: float) -> bool:
    """Can the hub be reached at all? Without this, every load on an offline
    machine spends ~25 s in huggingface_hub's retries before failing."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _model_class(spec: ModelSpec):
    import transformers
    return getattr(transformers, spec.model_class)


class Engine:
    """Holds the loaded models: at most one revision per registry key."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.device = pick_device(self.settings.device)
        self.dtype = pick_dtype(self.settings.dtype, self.device)
        self._cache: dict[str, Loaded] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._hub_ok: bool | None = None
        self.worker = Worker(inline=self.settings.zero_gpu)

    # -- public ---------------------------------------------------------
    def load(self, key: str, revision: str | None = None,
             status: Callable[[str], None] = lambda msg: None) -> Loaded:
        """The loaded model for `key` at `revision`, loading it on first use.
        Raises `ModelUnavailable` with an actionable message."""
        spec = get_spec(key)
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
            loaded = in_passing_thread(lambda: self._load(spec, revision, status))
            loaded.worker = self.worker
            self._cache[key] = loaded
            return loaded

    def loaded(self) -> list[Loaded]:
        return list(self._cache.values())

    def unload(self, key: str) -> None:
        self._cache.pop(key, None)

    # -- private --------------------------------------------------------
    def _load(self, spec: ModelSpec, revision: str, status) -> Loaded:
        s = self.settings
        if s.standin:
            return self._load_standin(spec, revision, status, notice=(
                f"**{spec.title}: stand-in.** The app was started with `--standin`: "
                "this model has the real architecture, tokenizer kind and special tokens, "
                "but tiny weights that only saw a page of test text: its output says "
                "nothing about the real model."))
        local = s.local_dirs.get(spec.key)
        try:
            if local:
                status(f"Loading {spec.title} from {local}…")
                return self._from_pretrained(spec, revision, local, source=f"directory {local}")
            status(f"Downloading or loading {spec.title} ({revision}) from the Hugging Face Hub…")
            return self._from_pretrained(spec, revision, spec.hub_id,
                                         source=f"hub {spec.hub_id}@{revision}")
        except Exception as exc:   # any failure: report it in the tab, never crash
            reason, fix = self._explain(spec, local, exc)
            log.warning("%s could not be loaded: %s", spec.key, reason)
            if s.strict:
                raise ModelUnavailable(f"{spec.title} could not be loaded: {reason}", fix) from exc
            return self._load_standin(spec, revision, status, notice=(
                f"**{spec.title} could not be loaded, so this tab is serving its stand-in** "
                f"(real architecture, tiny test weights: its output says nothing about the real model). "
                f"Why: {reason} Fix: {fix}"))

    def _explain(self, spec: ModelSpec, local: str | None, exc: Exception) -> tuple[str, str]:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ModelUnavailable):
            return exc.reason, exc.fix
        if local:
            if not Path(local).is_dir():
                return (f"the directory {local} does not exist.",
                        "Point TTL_LOCAL_DIRS / --local at a folder made by save_pretrained.")
            return (f"the directory {local} holds no loadable model ({first_line}).",
                    "Re-download the model into it, or remove the --local setting.")
        if self._hub_offline():
            return ("the Hugging Face Hub cannot be reached from this machine (offline, or "
                    "HF_HUB_OFFLINE is set) and the model is not in the local cache.",
                    "Run once with network access to cache it, or download it and pass "
                    f"`--local {spec.key}=DIR`.")
        return (f"{first_line}.", "Check the model id, your network, or pass "
                f"`--local {spec.key}=DIR`.")

    def _hub_offline(self) -> bool:
        if _env_flag("HF_HUB_OFFLINE"):
            return True
        if self._hub_ok is None:
            self._hub_ok = hub_reachable(self.settings.hub_probe_timeout)
        return not self._hub_ok

    def _load_standin(self, spec: ModelSpec, revision: str, status, notice: str) -> Loaded:
        status(f"Preparing the stand-in for {spec.title} (built once, then cached)…")
        path = standins.ensure(spec.key, self.settings.full_size_standins,
                               self.settings.standin_dir and Path(self.settings.standin_dir))
        return self._from_pretrained(spec, revision, str(path), source="stand-in, random weights",
                                     is_standin=True, notice=notice)

    def _from_pretrained(self, spec: ModelSpec, revision: str, where: str, source: str,
                         is_standin: bool = False, notice: str | None = None) -> Loaded:
        from transformers import AutoTokenizer
        t0 = time.perf_counter()
        adapter = self._adapter_path(spec, where, is_standin)   # a missing setting fails first
        # A directory is taken as it is; a hub id gets the revision, and no
        # network round-trips when the hub is out of reach (cache only).
        hub = {} if Path(where).is_dir() else {
            "revision": revision, "local_files_only": self._hub_offline()}
        if not is_standin and Path(where).is_dir():
            faults.check_directory(_model_class(spec), where)
        # trust_remote_code is never passed: only the registry's stock classes load.
        tokenizer = AutoTokenizer.from_pretrained(where, **hub)
        quantized = bool(adapter) and self.settings.load_in_4bit and self.device.type == "cuda"
        model = _model_class(spec).from_pretrained(
            where, **hub, **_placement_kwargs(self.device, self.dtype),
            **(_four_bit_kwargs(self.dtype) if quantized else {}))
        if self.device.type != "cuda":
            model.to(self.device)
        if adapter:
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, adapter)
            # Merging into 4-bit weights would round the adapter away: keep it separate.
            model = model if quantized else model.merge_and_unload()
            source += " (4-bit)" if quantized else ""
            source += f" + adapter {adapter}"
        model.eval()
        # The published TeenyTinyLlama and Aira configs say use_cache false and
        # generation inherits it: decoding is then 4-20x slower. Turn it on.
        model.config.use_cache = True
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.use_cache = True
        road = "off"
        if spec.is_generative:   # int8/bf16 weights and threads on CPU (fastpath.py)
            model, road = fastpath.apply(model, self.device, self.settings.fast)
            source += "" if road == "off" else f", {road} fast path"
        return Loaded(spec=spec, revision=revision, model=model, tokenizer=tokenizer,
                      source=source, device=self.device,
                      dtype=torch.bfloat16 if road == "bf16" else self.dtype,
                      load_seconds=time.perf_counter() - t0, is_standin=is_standin,
                      notice=notice, fast=road)

    def _adapter_path(self, spec: ModelSpec, where: str, is_standin: bool) -> str | None:
        if not spec.adapter_setting:
            return None
        if is_standin:
            return str(Path(where) / "adapter")
        adapter = os.environ.get(spec.adapter_setting, "").strip()
        if not adapter:
            raise ModelUnavailable(
                f"no LoRA adapter is configured for {spec.title}.",
                f"Set {spec.adapter_setting} to the adapter's hub id or local directory.")
        return adapter


def _four_bit_kwargs(dtype: torch.dtype) -> dict:
    from transformers import BitsAndBytesConfig
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)}


def _placement_kwargs(device: torch.device, dtype: torch.dtype) -> dict:
    # On CUDA, accelerate's device_map places the weights as they load;
    # elsewhere the model is loaded on CPU and moved.
    return {"dtype": dtype, **({"device_map": "auto"} if device.type == "cuda" else {})}
