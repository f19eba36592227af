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


@torch.inference_mode()
def _logits(m: Loaded, ids: list[int]) -> torch.Tensor:
    with m.lock:
        x = torch.tensor([ids], device=m.device)
        return m.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().cpu()


def _distribution(logits: torch.Tensor, seen: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The distribution the decoder drew from (decoder.py's own functions)."""
    logits = penalised(logits, seen, s.repetition_penalty)
    if not s.do_sample:
        return torch.softmax(logits, -1)
    ids, probs = candidates(logits, s)
    return torch.zeros_like(logits).scatter_(0, ids, probs)


def _infos(m: Loaded, ids: list[int], start: int, probs: torch.Tensor) -> list[TokenInfo]:
    """TokenInfo for ids[start:], where probs[i] is the distribution that
    predicted ids[start + i]."""
    texts = token_texts(m.tokenizer, ids, start)
    top_p, top_i = probs.topk(min(TOP_ALTERNATIVES, probs.shape[-1]), dim=-1)
    out = []
    for i, (text, tid) in enumerate(zip(texts, ids[start:])):
        alts = tuple((m.tokenizer.decode([int(j)]), float(p))
                     for p, j in zip(top_p[i], top_i[i]) if p > 0)
        out.append(TokenInfo(text, tid, float(probs[i, tid]), alts))
    return out


def explain(m: Loaded, prompt_ids: list[int], new_ids: list[int], s: Sampling) -> list[TokenInfo]:
    """Each of `new_ids` (generated after `prompt_ids` with settings `s`)
    with its probability and the top alternatives; see the module doc."""
    if not new_ids:
        return []
    ids = list(prompt_ids) + list(new_ids)
    logits = _logits(m, ids)[len(prompt_ids) - 1:-1]
    seq = torch.tensor(ids)
    probs = torch.stack([_distribution(logits[i], seq[:len(prompt_ids) + i], s)
                         for i in range(len(new_ids))])
    return _infos(m, ids, len(prompt_ids), probs)


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
    probs = torch.softmax(_logits(m, ids)[:-1], dim=-1)
    tokens = _infos(m, ids, 1, probs)
    nll = -torch.log(probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]).mean()
    return Perplexity(float(torch.exp(nll)), tokens, dropped)
