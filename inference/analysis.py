"""Looking inside a generation: "Why this token?" and perplexity.

`explain` shows, for each generated token, the distribution it was drawn
from, as the decoder recorded it when it drew the token (sampling.Drawn):
the model's softmax after the repetition penalty and, when sampling,
temperature, top-k and top-p. Nothing is computed again, so what is shown is
what happened: a greedy token is the argmax of what is shown, and a sampled
token never shows probability 0.

`perplexity` runs one forward pass over the whole text and uses the plain
softmax (no penalty, no temperature): the standard definition, exp of the
mean negative log-likelihood per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import EngineError
from .loading import Loaded
from .sampling import TOP_ALTERNATIVES, Drawn


@dataclass(frozen=True)
class TokenInfo:
    text: str                                   # the token's text as it reads in context
    id: int
    prob: float                                 # probability of this token
    alternatives: tuple[tuple[str, float], ...] # the most likely tokens at this position

    @property
    def surprise_bits(self) -> float:
        return -math.log2(self.prob) if self.prob > 0 else math.inf


def token_texts(tokenizer, ids: list[int], start: int) -> list[str]:
    """The text each of ids[start:] adds, decoded in context: SentencePiece
    drops a token's leading space when it is decoded on its own."""
    out, before = [], tokenizer.decode(ids[:start], skip_special_tokens=True)
    for i in range(start, len(ids)):
        now = tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
        out.append(now[len(before):] if now.startswith(before) else tokenizer.decode([ids[i]]))
        before = now
    return out


def explain(tokenizer, prompt_ids: list[int], drawn: list[Drawn]) -> list[TokenInfo]:
    """Each generated token (as `drawn` recorded it, after `prompt_ids`)
    with its probability and the top alternatives; see the module doc."""
    ids = list(prompt_ids) + [d.id for d in drawn]
    texts = token_texts(tokenizer, ids, len(prompt_ids))
    return [TokenInfo(text, d.id, d.prob, tuple((tokenizer.decode([i]), p) for i, p in d.top))
            for text, d in zip(texts, drawn)]


@dataclass(frozen=True)
class Perplexity:
    value: float
    tokens: list[TokenInfo]     # every scored token (all but the first)
    dropped: int                # tokens cut from the end to fit the context


def perplexity(m: Loaded, ids: list[int]) -> Perplexity:
    """Perplexity of `ids` (first token, e.g. <s>, given) under the model;
    a text longer than the context is scored on its first window."""
    if len(ids) < 2:
        raise EngineError("The text needs at least one token to score.", title="Nothing to score")
    room = m.spec.max_input_tokens - m.backend.scoring_room
    ids, dropped = ids[:room], max(len(ids) - room, 0)
    scored = m.backend.prompt_logprobs(m, [ids], top=TOP_ALTERNATIVES)[0]
    texts = token_texts(m.tokenizer, ids, 1)
    tokens = [TokenInfo(text, t.id, t.prob, tuple((m.tokenizer.decode([i]), math.exp(lp))
                                                   for i, lp in t.top))
              for text, t in zip(texts, scored)]
    nll = -sum(t.logprob for t in scored) / len(scored)
    return Perplexity(math.exp(nll) if nll < 700 else math.inf, tokens, dropped)
