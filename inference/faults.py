"""Running out of memory: recognising it and giving the memory back, so a
request that asked for too much fails alone and the next one runs."""

from __future__ import annotations

import gc
import math
from pathlib import Path

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


def check_directory(model_class, path: str) -> None:
    """Refuse a local model directory whose weights do not fill the model its
    config.json describes. transformers would initialise the missing weights
    at random: a config.json missing its sizes means a 7B-parameter Llama,
    and the process is killed for memory instead of showing a message."""
    from safetensors import safe_open
    from transformers import AutoConfig

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return   # other formats: left to from_pretrained
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        expected = sum(p.numel() for p in model_class(config).parameters())
    stored = 0
    for f in files:
        with safe_open(str(f), "pt") as weights:
            stored += sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    if stored < 0.9 * expected:   # tied embeddings are stored once; 10 % spare
        raise ValueError(f"its config.json describes {expected:,} parameters but its weights "
                         f"hold {stored:,}")
