"""What the operator chose at start, from flags or the environment: read
once, here (nothing else in the app reads the environment), and validated,
so that a typo fails at start rather than at a visitor's first click."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import torch

from urllib.parse import urlparse

from . import llamacpp
from .registry import REGISTRY, SCORE, get_spec

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
FAST_ROADS = ("auto", "off", "int8", "bf16")   # fastpath.py
# Which code computes a model (backends.py, remote.py). auto: on a CPU,
# llamacpp where llama.cpp is the faster (llamacpp.preferred), else local;
# transformers on CUDA/MPS, where the local decoder has not been measured.
# llamacpp: the local decoder computing in llama.cpp (an optional extra).
# vllm: OpenAI-compatible servers, named per model with their URLs.
BACKENDS = ("auto", "local", "llamacpp", "transformers", "vllm")
REMOTE = "vllm"


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _pairs(text: str, what: str) -> dict[str, str]:
    """'key=value,key=value' to a dict; keys must be registry keys."""
    out = {}
    for item in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise ValueError(f"Expected KEY={what}, got {item!r}")
        get_spec(key.strip())   # unknown keys fail at start, not at first use
        out[key.strip()] = value.strip()
    return out


def parse_local_dirs(text: str) -> dict[str, str]:
    """'key=dir,key=dir' (as in TTL_LOCAL_DIRS or --local) to a dict."""
    return _pairs(text, "DIR")


def parse_backends(text: str) -> tuple[str, dict[str, str], dict[str, tuple[str, ...]]]:
    """TTL_BACKEND: one backend for every model ('transformers'), per model
    ('ttl-460m=transformers'), or both ('local,ttl-460m=transformers'); a
    model's servers as 'ttl-160m=vllm:http://h1:8000|http://h2:8000'.
    Returns the default, the backend per model and the URLs per model."""
    default = [p.strip() for p in text.split(",") if p.strip() and "=" not in p]
    per_model = _pairs(",".join(p for p in text.split(",") if "=" in p), "BACKEND")
    if len(default) > 1:
        raise ValueError(f"TTL_BACKEND names more than one default backend: {default}")
    if default and default[0].startswith(REMOTE):
        raise ValueError(f"A server serves one model: name it, as in "
                         f"'ttl-160m={REMOTE}:http://host:8000', not {default[0]!r}")
    remotes = {}
    for key, value in per_model.items():
        name, _, urls = value.partition(":")
        if name == REMOTE:
            per_model[key], remotes[key] = REMOTE, _urls(key, urls)
    return (default[0] if default else "auto"), per_model, remotes


def _urls(key: str, text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split("|") if u.strip())
    if not urls:
        raise ValueError(f"{key}={REMOTE} needs its servers' URLs: "
                         f"{key}={REMOTE}:http://host:8000|http://host2:8000")
    for url in urls:
        parsed = urlparse(url)
        try:
            parsed.port   # a port that is not a number raises here
        except ValueError:
            parsed = None
        if not parsed or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{key}: {url!r} is not an http(s) URL")
    return urls


def _megabytes(text: str) -> int | None:
    """TTL_MEMORY_BUDGET: a whole number of MB, or empty for the default."""
    if not text.strip():
        return None
    if not text.strip().isdigit() or int(text) <= 0:
        raise ValueError(f"TTL_MEMORY_BUDGET is in MB, a whole number above 0; got {text!r}")
    return int(text)


def default_data_dir(env: Mapping[str, str] | None = None) -> str:
    """TTL_DATA_DIR; else a Space's persistent storage where it has one,
    else the user's data folder."""
    env = os.environ if env is None else env
    if env.get("TTL_DATA_DIR", "").strip():
        return env["TTL_DATA_DIR"].strip()
    if "SPACE_ID" in env and os.access("/data", os.W_OK):
        return "/data/ttl-playground"
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "ttl-playground")


@dataclass(frozen=True)
class Settings:
    device: str = "auto"
    dtype: str = "auto"
    standin: bool = False        # serve stand-ins only
    strict: bool = False         # never fall back to a stand-in
    local_dirs: Mapping[str, str] = field(default_factory=dict)
    standin_dir: str | None = None
    full_size_standins: bool = False   # stand-ins of the real shapes (a memory test)
    # The memory the kept models may take, in MB (memory.py); None: a share
    # of the machine's or container's memory.
    memory_budget_mb: int | None = None
    hub_probe_timeout: float = 3.0
    hub_offline: bool = False    # HF_HUB_OFFLINE: never ask the hub
    hub_endpoint: str = "https://huggingface.co"
    # A PEFT adapter (hub id or directory) per registry key whose entry has an
    # `adapter_setting`: the value of that environment variable.
    adapters: Mapping[str, str] = field(default_factory=dict)
    # 4-bit (bitsandbytes NF4) loading of the adapter models, as in the tweet
    # adapter's QLoRA training (seed 002). CUDA only; elsewhere it is ignored.
    load_in_4bit: bool = False
    fast: str = "auto"           # CPU fast path: auto | off | int8 | bf16 (fastpath.py)
    backend: str = "auto"        # every model's backend, unless named in `backends`
    backends: Mapping[str, str] = field(default_factory=dict)   # key -> backend
    remotes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)   # key -> server URLs
    # A ZeroGPU Space (it sets SPACES_ZERO_GPU): the GPU exists only inside a
    # request's `spaces.GPU` call, so the engine computes on the caller's
    # thread (worker.py) and the app loads its default models at start.
    zero_gpu: bool = False
    # TTL_API_KEY: when set, the OpenAI-compatible routes want
    # `Authorization: Bearer <key>`.
    api_key: str | None = None
    # TTL_DATA_DIR: what the app writes and keeps across restarts (votes,
    # fine-tuned models). On a Space, /data is its persistent storage.
    data_dir: str = field(default_factory=lambda: default_data_dir())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from the environment; `overrides` (flags) win where not None."""
        env = os.environ if env is None else env
        backend, backends, remotes = parse_backends(env.get("TTL_BACKEND", ""))
        values = dict(
            device=env.get("TTL_DEVICE", "auto"),
            dtype=env.get("TTL_DTYPE", "auto"),
            standin=_flag(env, "TTL_STANDIN"),
            strict=_flag(env, "TTL_STRICT"),
            local_dirs=parse_local_dirs(env.get("TTL_LOCAL_DIRS", "")),
            standin_dir=env.get("TTL_STANDIN_DIR") or None,
            full_size_standins=_flag(env, "TTL_FULL_SIZE_STANDINS"),
            memory_budget_mb=_megabytes(env.get("TTL_MEMORY_BUDGET", "")),
            hub_offline=_flag(env, "HF_HUB_OFFLINE"),
            hub_endpoint=env.get("HF_ENDPOINT", "https://huggingface.co"),
            adapters={s.key: env[s.adapter_setting].strip() for s in REGISTRY.values()
                      if s.adapter_setting and env.get(s.adapter_setting, "").strip()},
            load_in_4bit=_flag(env, "TTL_4BIT"),
            fast=env.get("TTL_FAST", "auto").strip().lower() or "auto",
            backend=backend, backends=backends, remotes=remotes,
            zero_gpu="SPACES_ZERO_GPU" in env,
            api_key=env.get("TTL_API_KEY") or None,
            data_dir=default_data_dir(env),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self):
        for name, allowed in (("device", DEVICES), ("dtype", tuple(DTYPES)),
                              ("fast", FAST_ROADS), ("backend", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.backend == REMOTE:
            raise ValueError(f"Name the model a {REMOTE} backend serves: KEY={REMOTE}:URL")
        for key, name in self.backends.items():
            if name not in BACKENDS:
                raise ValueError(f"backend for {key} must be one of {BACKENDS}, got {name!r}")
            if name == REMOTE and key not in self.remotes:
                raise ValueError(f"{key}={REMOTE} needs its servers' URLs: {key}={REMOTE}:URL")
            if name == REMOTE and REGISTRY[key].task == SCORE:
                # vLLM's /classify takes token ids without the pair's segment ids.
                raise ValueError(f"{key} is a scorer of text pairs; it computes locally")

    def asked(self, key: str) -> str:
        """The backend named for `key`, `auto` included."""
        return self.backends.get(key, self.backend)

    def backend_for(self, key: str, device: torch.device) -> str:
        """The backend that computes `key` on `device` (a name in BACKENDS but auto)."""
        name = self.asked(key)
        if name != "auto":
            return name
        if device.type != "cpu":
            return "transformers"
        # llama.cpp's Q8_0 is an int8 road: not where fp32 or bf16 was asked for.
        return "llamacpp" if self.fast in ("auto", "int8") and llamacpp.preferred() else "local"
