"""Running out of memory: recognising it and giving the memory back, so a
request that asked for too much fails alone and the next one runs."""

from __future__ import annotations

import gc

import torch


def is_out_of_memory(exc: BaseException) -> bool:
    # CUDA raises torch.OutOfMemoryError; MPS a RuntimeError saying "out of
    # memory", the CPU allocator one saying it can't allocate
    # ("DefaultCPUAllocator: can't allocate memory"); Python a MemoryError.
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in text or "can't allocate memory" in text))


def free_memory() -> None:
    """Drop the failed request's tensors and return cached GPU blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
