"""Sampling: the settings (`Sampling`, validated), the seed of each
completion, and how one row's next token is drawn from its logits: the
repetition penalty, temperature, top-k and top-p as transformers applies
them, then a draw with the request's own generator. Every backend and the
"Why this token?" view use these, so there is one definition of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Mapping

import torch

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


def for_completion(s: Sampling, k: int) -> Sampling:
    """The settings of completion k (0-based) of a request: seed + k, so that
    a set of completions is reproducible and its members differ."""
    return s if s.seed is None else replace(s, seed=(s.seed + k) % (MAX_SEED + 1))


def penalised(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty as transformers applies it (CTRL's): the logit of
    every token already in the text is divided by `penalty` when positive,
    multiplied when negative."""
    if penalty == 1.0 or not len(seen):
        return logits
    logits = logits.clone()
    prev = logits[seen]
    logits[seen] = torch.where(prev < 0, prev * penalty, prev / penalty)
    return logits


def candidates(logits: torch.Tensor, s: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens sampling may draw and their probabilities, after
    temperature, top-k and top-p (in that order, as in transformers). Works
    on the top-k alone: sorting 32,000 logits for every token is not free."""
    logits = logits.float() / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        values, ids = logits.topk(s.top_k)
    else:
        values, ids = logits.sort(descending=True)
    probs = torch.softmax(values, -1)
    if s.top_p < 1.0:   # keep the most likely tokens until their mass reaches top_p
        probs = probs * ((probs.cumsum(-1) - probs) < s.top_p)
        probs = probs / probs.sum()
    return ids, probs


TOP_ALTERNATIVES = 5


@dataclass(frozen=True)
class Drawn:
    """A token as it was drawn: its probability in the distribution it was
    drawn from (after the penalty and, when sampling, the filters) and the
    most likely tokens of that distribution. "Why this token?" shows these:
    recorded here, they are what really happened, never a second pass's
    estimate (a sampled token never shows p = 0)."""
    id: int
    prob: float
    top: tuple[tuple[int, float], ...]


def distribution(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The distribution a token is drawn from, over the whole vocabulary,
    given logits the repetition penalty has already been applied to."""
    if not s.do_sample:
        return torch.softmax(logits.float(), -1)
    ids, probs = candidates(logits, s)
    return torch.zeros(logits.shape[-1]).scatter_(0, ids, probs)


def drawn_from(probs: torch.Tensor, token: int) -> Drawn:
    """`token` as drawn from the distribution `probs` (over the vocabulary)."""
    top_p, top_i = probs.topk(min(TOP_ALTERNATIVES, probs.shape[-1]))
    return Drawn(token, float(probs[token]),
                 tuple((int(i), float(p)) for i, p in zip(top_i, top_p) if p > 0))


def draw(logits: torch.Tensor, seen: torch.Tensor, s: Sampling,
         generator: torch.Generator) -> Drawn:
    """The next token of one row: greedy, or drawn with the row's own
    generator, so that no request's draws depend on another's."""
    logits = penalised(logits, seen, s.repetition_penalty)
    if not s.do_sample:
        probs = torch.softmax(logits.float(), -1)
        return drawn_from(probs, int(probs.argmax()))
    ids, probs = candidates(logits, s)   # the top-k, most likely first
    pick = int(torch.multinomial(probs, 1, generator=generator))
    top = tuple((int(i), float(p)) for i, p in zip(ids[:TOP_ALTERNATIVES], probs[:TOP_ALTERNATIVES])
                if p > 0)
    return Drawn(int(ids[pick]), float(probs[pick]), top)


@dataclass(frozen=True)
class Scored:
    """A token of a given text under the plain softmax: its log-probability
    and the most likely tokens at its position (for perplexity, label
    scoring; what vLLM calls prompt logprobs)."""
    id: int
    logprob: float
    top: tuple[tuple[int, float], ...]   # (id, logprob), most likely first

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)
