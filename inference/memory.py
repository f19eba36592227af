"""How much memory models take, and how much they may: the engine keeps
models within a budget (TTL_MEMORY_BUDGET, in MB), letting the least
recently used go before a load would pass it.

What a model costs is counted twice: before loading, the peak of its load,
from its config; and once loaded, from its tensors as they are then (int8
weights at one byte each)."""

from __future__ import annotations

import ctypes
import functools
import gc
import os
from pathlib import Path

import torch

from .loading import BUILDING
from .registry import get_spec

MB = 2 ** 20
# The share of the machine's (or the container's) memory the models may
# take by default. The rest is the process itself (torch and Gradio,
# ~0.4 GB), decode caches, visitors' sessions and the page cache. On a free
# CPU Space (16 GB) that is 9.6 GB: every default model and either 460m or
# TinyLlama beside them.
DEFAULT_SHARE = 0.6
# A load's peak against the model's fp32 size. from_pretrained maps the
# weights file; the fast path then reads every page of it (resident while
# mapped) while it writes the int8 copies. Measured for a full-size
# TeenyTinyLlama-160m classifier (525 MB in fp32): +850 MB at the peak,
# +310 MB once loaded; 2x also covers a model loaded in fp32 and cast.
LOAD_PEAK = 2


def machine_bytes() -> int:
    """The memory this process may use: a container's limit (cgroup v2 or
    v1) where there is one below the machine's, else the machine's."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total


def default_budget() -> int:
    return int(machine_bytes() * DEFAULT_SHARE)


@functools.lru_cache(maxsize=None)
def load_bytes(key: str, full_size: bool) -> int:
    """Memory a load of model `key` takes at its peak: LOAD_PEAK times its
    parameters in fp32, counted on the meta device from the shape's config
    (no memory used). `full_size` False: the tiny stand-in's shape."""
    import transformers
    from .standins import config_for
    spec = get_spec(key)
    cls = getattr(transformers, spec.model_class)
    with BUILDING, torch.device("meta"):
        model = cls._from_config(config_for(spec, full_size))
    return sum(p.numel() for p in model.parameters()) * 4 * LOAD_PEAK


def folder_load_bytes(directory: str) -> int:
    """Memory a load of a model saved in `directory` (in fp32, as
    fine-tuning saves it) takes at its peak: LOAD_PEAK times its weights."""
    return sum(f.stat().st_size for f in Path(directory).glob("*.safetensors")) * LOAD_PEAK


def resident_bytes(model: torch.nn.Module | None) -> int:
    """Bytes the model's tensors hold now, each storage counted once (tied
    weights share one), and the weights packed for fbgemm, which no tensor
    shows (fastpath.PackedInt8Linear)."""
    if model is None:
        return 0
    storages = {}
    for t in list(model.parameters()) + list(model.buffers()):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values()) + sum(getattr(m, "packed_bytes", 0) for m in model.modules())


def give_back() -> None:
    """Return the memory of models let go to the system: their tensors are
    freed once nothing refers to them (a collection breaks the model's
    reference cycles), and malloc_trim hands glibc's freed pages back."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: the pages go back when the system wants them
        pass
