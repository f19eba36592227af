"""Classification: the TeenyTinyLlama fine-tunes (a softmax over their
labels), the BERT scorers (one logit), and label scoring for the tweet
adapter (the label words scored as continuations)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .formats import encode, encode_pair
from .loading import Loaded
from .registry import TWEET_SYSTEM_PROMPT


def _pad(ids: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):   # right padding: the fine-tunes pool the last real token
        input_ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return input_ids.to(device), mask.to(device)


def encode_inputs(m: Loaded, fields: Mapping[str, str]) -> list[int]:
    ids = encode(m.spec.prompt_format, m.tokenizer, fields)
    return ids[:m.spec.max_input_tokens]   # the fine-tunes truncate at 256


def classify(m: Loaded, rows: Sequence[Mapping[str, str]]) -> list[dict[str, float]]:
    """Label probabilities for each row (a dict of the spec's input fields),
    padded to the longest row and run as one batch."""
    ids = [encode_inputs(m, r) for r in rows]
    input_ids, mask = _pad(ids, m.model.config.pad_token_id, m.device)
    with m.lock, torch.inference_mode():
        logits = m.model(input_ids=input_ids, attention_mask=mask).logits.float()
    probs = torch.softmax(logits, dim=-1).cpu()
    return [dict(zip(m.spec.labels, map(float, p))) for p in probs]


def score_pairs(m: Loaded, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """The scorers' single logit for each (question, answer) pair."""
    out = []
    with m.lock, torch.inference_mode():
        for q, a in pairs:
            enc = encode_pair(m.tokenizer, q, a, m.spec.max_input_tokens).to(m.device)
            out.append(float(m.model(**enc).logits[0, 0]))
    return out


def label_logprobs(m: Loaded, text: str) -> dict[str, float]:
    """Log-likelihood of each label word as the assistant's answer to the
    seed's system prompt and `text`. Each label is encoded together with the
    prompt (as the model would see it) and only the tokens after the part
    all sequences share are scored, so the comparison is exact."""
    fields = {"system": TWEET_SYSTEM_PROMPT, "text": text}
    seqs = [encode(m.spec.prompt_format, m.tokenizer, {**fields, "answer": label})
            for label in m.spec.labels]
    shared = 0
    while all(len(s) > shared + 1 and s[shared] == seqs[0][shared] for s in seqs):
        shared += 1
    cut = max(0, max(map(len, seqs)) - m.spec.max_input_tokens)   # keep the end
    seqs = [s[cut:] for s in seqs]
    shared -= cut
    input_ids, mask = _pad(seqs, m.tokenizer.pad_token_id, m.device)
    with m.lock, torch.inference_mode():
        logits = m.model(input_ids=input_ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits, -1)
    return {label: float(sum(logp[row, p - 1, seq[p]] for p in range(shared, len(seq))))
            for row, (label, seq) in enumerate(zip(m.spec.labels, seqs))}


def score_labels(m: Loaded, text: str) -> dict[str, float]:
    """A distribution over the three labels: softmax of their log-likelihoods."""
    lp = label_logprobs(m, text)
    probs = torch.softmax(torch.tensor(list(lp.values())), 0)
    return dict(zip(lp, map(float, probs)))
