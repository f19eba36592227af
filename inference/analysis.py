"""Looking inside a generation: "Why this token?" and perplexity.

Both run one forward pass over a whole sequence and read each position's
next-token distribution.

`explain` shows, for each generated token, the distribution it was drawn
from: the model's softmax after the same processing `generation` applies —
the repetition penalty over the tokens so far, then (when sampling)
temperature, top-k and top-p. Greedy output is scored after the repetition
penalty alone, so its tokens are the argmax of what is shown. A token the
filters removed would show probability 0; a sampled token never is.

`perplexity` uses the plain softmax (no penalty, no temperature): the
standard definition, exp of the mean negative log-likelihood per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .decoder import candidates, penalised
from .generation import Sampling
from .loading import Loaded

TOP_ALTERNATIVES = 5


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


def _distribution(logits: torch.Tensor, seen: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The distribution the decoder drew from (decoder.py's own functions)."""
    logits = penalised(logits, seen, s.repetition_penalty)
    if not s.do_sample:
        return torch.softmax(logits, -1)
    ids, probs = candidates(logits, s)
    return torch.zeros_like(logits).scatter_(0, ids, probs)


def _scored(m: Loaded, ids: list[int], start: int,
            to_probs: Callable[[torch.Tensor], torch.Tensor]) -> list[TokenInfo]:
    """TokenInfo for ids[start:]: one forward pass over `ids` on the compute
    thread, `to_probs` turning the logits that predicted ids[start:] into
    distributions there too; only the small results leave it."""
    def compute():
        x = torch.tensor([ids], device=m.device)
        logits = m.model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        probs = to_probs(logits[0, start - 1:-1].float().cpu())
        chosen = probs[torch.arange(len(probs)), torch.tensor(ids[start:])]
        return chosen.tolist(), *probs.topk(min(TOP_ALTERNATIVES, probs.shape[-1]), dim=-1)

    chosen, top_p, top_i = m.run(compute)
    texts = token_texts(m.tokenizer, ids, start)
    out = []
    for i, (text, tid) in enumerate(zip(texts, ids[start:])):
        alts = tuple((m.tokenizer.decode([int(j)]), float(p))
                     for p, j in zip(top_p[i], top_i[i]) if p > 0)
        out.append(TokenInfo(text, tid, chosen[i], alts))
    return out


def explain(m: Loaded, prompt_ids: list[int], new_ids: list[int], s: Sampling) -> list[TokenInfo]:
    """Each of `new_ids` (generated after `prompt_ids` with settings `s`)
    with its probability and the top alternatives; see the module doc."""
    if not new_ids:
        return []
    ids = list(prompt_ids) + list(new_ids)
    seq, n = torch.tensor(ids), len(prompt_ids)
    return _scored(m, ids, n, lambda logits: torch.stack(
        [_distribution(row, seq[:n + i], s) for i, row in enumerate(logits)]))


@dataclass(frozen=True)
class Perplexity:
    value: float
    tokens: list[TokenInfo]     # every scored token (all but the first)
    dropped: int                # tokens cut from the end to fit the context


def perplexity(m: Loaded, ids: list[int]) -> Perplexity:
    """Perplexity of `ids` (first token, e.g. <s>, given) under the model;
    a text longer than the context is scored on its first window."""
    if len(ids) < 2:
        raise ValueError("The text needs at least one token to score.")
    room = m.spec.max_input_tokens
    ids, dropped = ids[:room], max(len(ids) - room, 0)
    tokens = _scored(m, ids, 1, lambda logits: torch.softmax(logits, -1))
    nll = -sum(math.log(t.prob) if t.prob > 0 else -math.inf for t in tokens) / len(tokens)
    return Perplexity(math.exp(nll) if nll < 700 else math.inf, tokens, dropped)
