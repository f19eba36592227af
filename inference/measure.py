"""Measurements on the running machine: a causal model's perplexity on a
text, and a generative model's decoding speed. The Benchmarks tab shows
these apart from the published figures."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from . import generation
from .loading import Loaded


def perplexity(m: Loaded, text: str) -> tuple[float, list[tuple[str, float]]]:
    """exp(mean surprisal) of `text` under a causal LM, and each predicted
    token with its surprisal in nats (-log p(token | the tokens before)).

    The text is tokenized as the model was trained (TeenyTinyLlama's
    tokenizer adds <s>, so the first word is scored too) and cut to the
    model's context window; only the tokens scored count."""
    ids = m.tokenizer(text)["input_ids"][: m.spec.max_input_tokens]
    if len(ids) < 2:
        raise ValueError("The text is too short: it needs at least two tokens to score one.")
    input_ids = torch.tensor([ids], device=m.device)
    with m.lock, torch.inference_mode():
        logits = m.model(input_ids=input_ids).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = input_ids[0, 1:]
    surprisal = (-logprobs.gather(1, targets[:, None])[:, 0]).cpu().tolist()
    tokens = m.tokenizer.convert_ids_to_tokens(ids[1:])
    ppl = math.exp(sum(surprisal) / len(surprisal))
    return ppl, list(zip(tokens, surprisal))


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
    s = generation.Sampling(do_sample=False, max_new_tokens=new_tokens,
                            repetition_penalty=1.0).checked()
    first = last = None
    text = ""
    for piece in generation.stream(m, ids, s):
        last = time.perf_counter()
        first = first or last
        text += piece
    count = len(m.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    return Speed(new_tokens=count, seconds=(last - first) if first else 0.0)
