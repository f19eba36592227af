"""A measurement on the running machine: a generative model's decoding
speed. The Benchmarks tab shows it apart from the published figures."""

from __future__ import annotations

import time
from dataclasses import dataclass


from . import formats, generation
from .sampling import Sampling
from .loading import Loaded


@dataclass(frozen=True)
class Speed:
    new_tokens: int
    seconds: float     # from the first new token to the last

    @property
    def tokens_per_second(self) -> float:
        return (self.new_tokens - 1) / self.seconds if self.seconds > 0 and self.new_tokens > 1 else 0.0


def decoding_speed(m: Loaded, prompt: str, new_tokens: int = 32) -> Speed:
    """Greedy decoding of up to `new_tokens` after `prompt` (in the model's
    own prompt format: Aira's instruction tokens for Aira) through the app's
    own streaming path. Timed from the first token, so the prompt's prefill
    is not counted; tokens are counted from the generated ids."""
    ids = formats.encode(m.spec.prompt_format, m.tokenizer,
                         {"system": m.spec.system_prompt, "text": prompt})
    ids, _ = generation.fit_context(ids, m.spec.max_input_tokens, new_tokens, keep_first=1)
    s = Sampling(do_sample=False, max_new_tokens=new_tokens, repetition_penalty=1.0).checked()
    first = last = None
    count = 0
    for _, new, _ in generation.stream_tokens(m, ids, s):
        last = time.perf_counter()
        first = first or last
        count = len(new)
    return Speed(new_tokens=count, seconds=(last - first) if first else 0.0)
