"""Measurements on the running machine: a causal model's perplexity on a
text, and a generative model's decoding speed. The Benchmarks tab shows
these apart from the published figures."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


from . import analysis, generation
from .sampling import Sampling
from .loading import Loaded


def perplexity(m: Loaded, text: str) -> tuple[float, list[tuple[str, float]]]:
    """exp(mean surprisal) of `text` under a causal LM, and each predicted
    token with its surprisal in nats (-log p(token | the tokens before)).
    The text is tokenized as the model was trained (TeenyTinyLlama's
    tokenizer adds <s>, so the first word is scored too); the scoring itself
    is the generation tab's (analysis.perplexity)."""
    p = analysis.perplexity(m, m.tokenizer(text)["input_ids"])
    tokens = m.tokenizer.convert_ids_to_tokens([t.id for t in p.tokens])
    return p.value, [(tok, t.surprise_bits * math.log(2)) for tok, t in zip(tokens, p.tokens)]


@dataclass(frozen=True)
class Speed:
    new_tokens: int
    seconds: float     # from the first new token to the last

    @property
    def tokens_per_second(self) -> float:
        return (self.new_tokens - 1) / self.seconds if self.seconds > 0 and self.new_tokens > 1 else 0.0


def decoding_speed(m: Loaded, prompt: str, new_tokens: int = 32) -> Speed:
    """Greedy decoding of up to `new_tokens` after `prompt` through the app's
    own streaming path (generation.stream). Timed from the first token, so
    the prompt's prefill is not counted; tokens are counted by re-tokenizing
    the text, as the generation tab does."""
    ids = m.tokenizer(prompt)["input_ids"]
    ids, _ = generation.fit_context(ids, m.spec.max_input_tokens, new_tokens, keep_first=1)
    s = Sampling(do_sample=False, max_new_tokens=new_tokens,
                            repetition_penalty=1.0).checked()
    first = last = None
    text = ""
    for piece in generation.stream(m, ids, s):
        last = time.perf_counter()
        first = first or last
        text += piece
    count = len(m.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    return Speed(new_tokens=count, seconds=(last - first) if first else 0.0)
