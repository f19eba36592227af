"""Classification: the TeenyTinyLlama fine-tunes (a softmax over their
labels), the BERT scorers (one logit), and label scoring for the tweet
adapter (the label words scored as continuations)."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from .formats import encode, encode_pair
from .loading import Loaded
from .batching import MicroBatcher
from .registry import LABEL_SCORE, TWEET_SYSTEM_PROMPT


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
    logits = m.run(lambda: m.model(input_ids=input_ids, attention_mask=mask).logits.float())
    probs = torch.softmax(logits, dim=-1).cpu()
    return [dict(zip(m.spec.labels, map(float, p))) for p in probs]


def score_pairs(m: Loaded, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """The scorers' single logit for each (question, answer) pair."""
    encoded = [encode_pair(m.tokenizer, q, a, m.spec.max_input_tokens).to(m.device)
               for q, a in pairs]
    return m.run(lambda: [float(m.model(**enc).logits[0, 0]) for enc in encoded])


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
    logits = m.run(lambda: m.model(input_ids=input_ids, attention_mask=mask).logits.float())
    logp = torch.log_softmax(logits, -1)
    return {label: float(sum(logp[row, p - 1, seq[p]] for p in range(shared, len(seq))))
            for row, (label, seq) in enumerate(zip(m.spec.labels, seqs))}


def score_labels(m: Loaded, text: str) -> dict[str, float]:
    """A distribution over the three labels: softmax of their log-likelihoods."""
    lp = label_logprobs(m, text)
    probs = torch.softmax(torch.tensor(list(lp.values())), 0)
    return dict(zip(lp, map(float, probs)))


# -- free generation, micro-batching, batches ----------------------------

def free_answer(m: Loaded, text: str, max_new_tokens: int = 8) -> str:
    """What the tweet model answers when it is free to write (greedy, a few
    tokens): the seed notes it does not reliably answer with one word."""
    from .generation import complete, fit_context
    from .sampling import Sampling
    ids = encode("zephyr-chat", m.tokenizer, {"system": TWEET_SYSTEM_PROMPT, "text": text})
    ids, _ = fit_context(ids, m.spec.max_input_tokens, max_new_tokens, keep_first=1)
    s = Sampling.from_defaults(m.spec.defaults, max_new_tokens=max_new_tokens,
                               do_sample=False, repetition_penalty=1.0)
    return complete(m, ids, s).strip()


def batcher(m: Loaded) -> MicroBatcher:
    """The model's micro-batcher (one per loaded model, kept with it)."""
    if "batcher" not in m.extras:
        run = (lambda rows: [score_labels(m, r["text"]) for r in rows]) \
            if m.spec.task == LABEL_SCORE else (lambda rows: classify(m, rows))
        m.extras.setdefault("batcher", MicroBatcher(run))
    return m.extras["batcher"]


def classify_one(m: Loaded, fields: Mapping[str, str]) -> dict[str, float]:
    """One request's label probabilities; requests arriving together are
    run as one padded batch."""
    return batcher(m).submit(dict(fields))


MAX_ROW_CHARS = 20_000   # as the single-text box
BATCH_CHUNK = 16


def row_error(m: Loaded, fields: Mapping[str, str]) -> str | None:
    """Why a batch row cannot be classified, or None."""
    for name in m.spec.inputs:
        value = fields.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"empty {name}"
        if len(value) > MAX_ROW_CHARS:
            return f"{name} too long ({len(value):,} characters; limit {MAX_ROW_CHARS:,})"
    return None


def classify_rows(m: Loaded, rows: Sequence[Mapping[str, str]],
                  progress: Callable[[int, int], None] = lambda done, total: None,
                  ) -> list[dict[str, float] | str]:
    """Label probabilities for each row, or the reason the row was skipped.
    Bad rows are reported, never abort the batch; good rows run in chunks."""
    out: list[dict[str, float] | str] = [row_error(m, r) or "" for r in rows]
    good = [i for i, err in enumerate(out) if not err]
    for start in range(0, len(good), BATCH_CHUNK):
        idx = good[start:start + BATCH_CHUNK]
        chunk = [rows[i] for i in idx]
        probs = ([score_labels(m, r["text"]) for r in chunk] if m.spec.task == LABEL_SCORE
                 else classify(m, chunk))
        for i, p in zip(idx, probs):
            out[i] = p
        progress(min(start + BATCH_CHUNK, len(good)), len(good))
    return out
