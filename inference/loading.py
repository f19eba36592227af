"""Loading one model from one place: a hub id at a revision, or a local
directory (anything `save_pretrained` wrote), with transformers, a PEFT
adapter and, on CUDA, 4-bit weights; device and dtype placement. What to do
when that fails is fallback.py's; which models are kept is engine.py's."""

from __future__ import annotations

import contextvars
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar
from urllib.parse import urlparse

import torch

from . import faults
from .errors import ModelUnavailable
from .registry import ModelSpec
from .settings import DTYPES, Settings

if TYPE_CHECKING:
    from .backends import Backend
    from .batching import MicroBatcher
    from .decoder import Decoder
    from .worker import Worker

T = TypeVar("T")


@dataclass(eq=False)
class Loaded:
    """A model as the engine serves it."""
    spec: ModelSpec
    revision: str
    model: torch.nn.Module | None   # None when a remote backend holds the weights
    tokenizer: object
    source: str                  # where the weights came from, for people
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    is_standin: bool = False
    notice: str | None = None    # markdown for the tab's banner
    fast: str = "off"            # the CPU fast path's road (fastpath.py)
    config: object = None        # the model's config (label maps, vocab size)
    resident: int = 0            # bytes it holds: its tensors, and its backend's own (Backend.resident)
    users: int = 0               # requests using it now (the engine never lets it go then)
    retry_at: float | None = None   # a stand-in after a failure: when to try the model again
    # Set by the engine: the backend that computes it and the engine's
    # compute thread, where every forward pass runs (worker.py).
    backend: "Backend | None" = None
    worker: "Worker | None" = None
    # Made on first use by the local backend and the classifier batcher.
    decoder: "Decoder | None" = None
    batcher: "MicroBatcher | None" = None

    def run(self, fn: Callable[[], T]) -> T:
        """`fn()` (a forward pass on this model) run on the compute thread."""
        return self.worker.call(fn)

    @property
    def banner(self) -> str | None:
        """The tab's banner: the stand-in notice and the backend's news (a
        server not answering)."""
        parts = [self.notice, self.backend.status(self) if self.backend else None]
        return "\n\n".join(p for p in parts if p) or None

    @property
    def label(self) -> str:
        if self.model is None:   # computed elsewhere: device and dtype are the servers'
            return " · ".join([f"{self.backend.name} backend"] + ["stand-in"] * self.is_standin)
        parts = [self.device.type, str(self.dtype).removeprefix("torch.")]
        parts += ["int8 weights"] if self.fast == "int8" else []
        parts += [tag] if self.backend and (tag := self.backend.tag(self)) else []
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


def hub_reachable(endpoint: str, timeout: float) -> bool:
    """Can the hub be reached at all? Without this, every load on an offline
    machine spends ~25 s in huggingface_hub's retries before failing."""
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def model_class(spec: ModelSpec):
    import transformers
    return getattr(transformers, spec.model_class)


def adapter_for(spec: ModelSpec, settings: Settings, where: str, is_standin: bool) -> str | None:
    """The PEFT adapter to put on `spec`'s base model, if it takes one."""
    if not spec.adapter_setting:
        return None
    if is_standin:
        return str(Path(where) / "adapter")
    adapter = settings.adapters.get(spec.key)
    if not adapter:
        raise ModelUnavailable(
            f"no LoRA adapter is configured for {spec.title}.",
            f"Set {spec.adapter_setting} to the adapter's hub id or local directory.")
    return adapter


# transformers 5 swaps class and module attributes while it builds a model
# (PreTrainedModel.tie_weights and init_weights, torch.nn.init's functions:
# initialization.no_tie_weights, no_init_weights) and puts them back after.
# Two builds at once in one process can leave them swapped for good: a model
# with tied weights (Aira) then keeps its head on the meta device, and every
# later load of it fails. So models are built one at a time in the whole
# process: every engine's loads, fine-tuning's classifier, the stand-ins.
BUILDING = threading.RLock()


def from_pretrained(spec: ModelSpec, revision: str, where: str, source: str, settings: Settings,
                    device: torch.device, dtype: torch.dtype, hub_offline: bool,
                    is_standin: bool = False, weights: bool = True) -> Loaded:
    """`spec`'s model and tokenizer from `where` (a hub id or a directory);
    without `weights`, the tokenizer and config only (a remote backend)."""
    t0 = time.perf_counter()
    # A missing adapter setting fails first; a remote server holds its own adapter.
    adapter = adapter_for(spec, settings, where, is_standin) if weights else None
    # A directory is taken as it is; a hub id gets the revision, and no
    # network round-trips when the hub is out of reach (cache only).
    hub = {} if Path(where).is_dir() else {"revision": revision, "local_files_only": hub_offline}
    if not is_standin and Path(where).is_dir():
        faults.check_directory(model_class(spec), where)
    # trust_remote_code is never passed: only the registry's stock classes load.
    with BUILDING:
        return _from_pretrained(spec, revision, where, source, settings, device, dtype, hub,
                                adapter, is_standin, weights, t0)


def _from_pretrained(spec, revision, where, source, settings, device, dtype, hub, adapter,
                     is_standin, weights, t0) -> Loaded:
    from transformers import AutoConfig, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(where, **hub)
    if not weights:
        return Loaded(spec=spec, revision=revision, model=None, tokenizer=tokenizer,
                      source=source, device=device, dtype=dtype,
                      load_seconds=time.perf_counter() - t0, is_standin=is_standin,
                      config=AutoConfig.from_pretrained(where, **hub))
    quantized = bool(adapter) and settings.load_in_4bit and device.type == "cuda"
    model = model_class(spec).from_pretrained(
        where, **hub, **_placement_kwargs(device, dtype),
        **(_four_bit_kwargs(dtype) if quantized else {}))
    if device.type != "cuda":
        model.to(device)
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
    return Loaded(spec=spec, revision=revision, model=model, tokenizer=tokenizer, source=source,
                  device=device, dtype=dtype, load_seconds=time.perf_counter() - t0,
                  is_standin=is_standin, config=model.config)


def _four_bit_kwargs(dtype: torch.dtype) -> dict:
    from transformers import BitsAndBytesConfig
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)}


def _placement_kwargs(device: torch.device, dtype: torch.dtype) -> dict:
    # On CUDA, accelerate's device_map places the weights as they load;
    # elsewhere the model is loaded on CPU and moved.
    return {"dtype": dtype, **({"device_map": "auto"} if device.type == "cuda" else {})}
