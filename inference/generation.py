"""Generation: streaming token by token from a worker thread, with the
sampling settings of the model cards, stopping on each model's end token,
and cancellation that really stops the worker.

Read top to bottom: `Sampling` (validated settings) -> `fit_context` (cut an
over-long prompt) -> `stream` (start the worker, yield text as it comes).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields
from typing import Iterator, Mapping

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, StoppingCriteria,
                          StoppingCriteriaList, TemperatureLogitsWarper,
                          TextIteratorStreamer, TopKLogitsWarper, TopPLogitsWarper)

from .loading import Loaded

MAX_NEW_TOKENS_CAP = 1024   # a demo answer; a billion is an input error
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; `checked()` turns bad values into clear messages."""
    temperature: float = 0.2
    top_k: int = 20
    top_p: float = 0.2
    repetition_penalty: float = 1.2
    max_new_tokens: int = 150
    do_sample: bool = True
    seed: int | None = None

    @classmethod
    def from_defaults(cls, defaults: Mapping, **overrides) -> "Sampling":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in defaults.items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).checked()

    def checked(self) -> "Sampling":
        def number(name, lo, hi, integer=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a number, got {v!r}.")
            if integer and v != int(v):
                raise ValueError(f"{name} must be a whole number, got {v!r}.")
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be between {lo} and {hi}, got {v!r}.")
            return int(v) if integer else float(v)

        seed = self.seed
        # None, "" and -1 mean "random": a Number field in the page cannot be empty.
        seed = None if seed in (None, "", -1) else number("seed", -1, MAX_SEED, integer=True)
        return Sampling(
            temperature=number("temperature", 0.01, 5.0),
            top_k=number("top_k", 0, 1000, integer=True),
            top_p=number("top_p", 0.01, 1.0),
            repetition_penalty=number("repetition_penalty", 1.0, 3.0),
            max_new_tokens=number("max_new_tokens", 1, MAX_NEW_TOKENS_CAP, integer=True),
            do_sample=bool(self.do_sample),
            seed=seed)


def fit_context(ids: list[int], context: int, max_new_tokens: int,
                keep_first: int = 0) -> tuple[list[int], int]:
    """Cut a prompt from the left so that prompt + answer fit the context
    window. `keep_first` tokens (e.g. <s>) are always kept. Returns the ids
    and how many tokens were dropped."""
    room = max(context - max_new_tokens, keep_first + 1)
    if len(ids) <= room:
        return ids, 0
    dropped = len(ids) - room
    return ids[:keep_first] + ids[keep_first + dropped:], dropped


class SeededSampler(LogitsProcessor):
    """Draws the next token with a generator of its own and hands it to
    greedy search as a one-hot score. `generate` would otherwise sample from
    torch's global RNG, which concurrent requests share, so a seed would not
    reproduce the same text."""

    def __init__(self, seed: int | None):
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores.float(), dim=-1).cpu()
        choice = torch.multinomial(probs, 1, generator=self.generator).to(scores.device)
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(1, choice, 0.0)


class Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return self.event.is_set()


def processors(s: Sampling) -> LogitsProcessorList:
    """Temperature, top-k and top-p as in sampling, then our seeded draw.
    (The repetition penalty is added by `generate` itself, before these.)"""
    if not s.do_sample:
        return LogitsProcessorList()
    chain = [TemperatureLogitsWarper(s.temperature)]
    if s.top_k:
        chain.append(TopKLogitsWarper(s.top_k))
    if s.top_p < 1.0:
        chain.append(TopPLogitsWarper(s.top_p))
    return LogitsProcessorList(chain + [SeededSampler(s.seed)])


def generate_kwargs(m: Loaded, ids: list[int], s: Sampling, cancel: threading.Event) -> dict:
    input_ids = torch.tensor([ids], device=m.device)
    return dict(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
        max_new_tokens=s.max_new_tokens, do_sample=False, num_beams=1,
        repetition_penalty=s.repetition_penalty, use_cache=True,
        logits_processor=processors(s),
        stopping_criteria=StoppingCriteriaList([Cancelled(cancel)]),
        eos_token_id=m.model.generation_config.eos_token_id or m.tokenizer.eos_token_id,
        pad_token_id=m.tokenizer.pad_token_id or m.tokenizer.eos_token_id,
        # Sampling is done by SeededSampler; unset the model's own defaults so
        # generate does not warn about or apply them a second time.
        temperature=None, top_k=None, top_p=None)


class IdStreamer(TextIteratorStreamer):
    """A text streamer that also keeps the generated token ids, so callers
    count and score the tokens the model chose instead of re-tokenizing text
    (which can split differently)."""

    def __init__(self, tokenizer, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.ids: list[int] = []

    def put(self, value):
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.ids.extend(value.reshape(-1).tolist())
        super().put(value)


def stream(m: Loaded, ids: list[int], s: Sampling,
           cancel: threading.Event | None = None) -> Iterator[str]:
    """Yield the new text piece by piece. Closing the iterator (a Gradio
    cancel, a closed page) or setting `cancel` stops the worker thread."""
    tokens = stream_tokens(m, ids, s, cancel)
    try:
        for text, _ in tokens:
            if text:
                yield text
    finally:
        tokens.close()   # stops the worker now, not when garbage is collected


def stream_tokens(m: Loaded, ids: list[int], s: Sampling,
                  cancel: threading.Event | None = None) -> Iterator[tuple[str, list[int]]]:
    """As `stream`, with the new token ids so far alongside each text piece;
    the last item has all of them (an end token included) and may carry no
    text."""
    cancel = cancel or threading.Event()
    streamer = IdStreamer(m.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def work():
        try:
            with m.lock, torch.inference_mode():
                if not cancel.is_set():
                    m.model.generate(**generate_kwargs(m, ids, s, cancel), streamer=streamer)
        except BaseException as exc:   # surfaces in the consumer below
            failure.append(exc)
        finally:
            streamer.end()   # never leave the consumer waiting

    worker = threading.Thread(target=work, name=f"generate-{m.spec.key}", daemon=True)
    worker.start()
    try:
        for text in streamer:
            if text:
                yield text, list(streamer.ids)
        if failure:
            raise failure[0]
        yield "", list(streamer.ids)
    finally:
        cancel.set()
        worker.join(timeout=5)


def complete(m: Loaded, ids: list[int], s: Sampling) -> str:
    return "".join(stream(m, ids, s))
