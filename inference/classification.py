"""Classification: the TeenyTinyLlama fine-tunes (a softmax over their
labels), the BERT scorers (one logit), and label scoring for the tweet
adapter (the label words scored as continuations). The compute is the
model's backend's (`classify`, `continuation_logprobs`)."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from .batching import MicroBatcher
from .formats import encode, encode_pair
from .loading import Loaded
from .registry import LABEL_SCORE


def encode_inputs(m: Loaded, fields: Mapping[str, str]) -> dict[str, list[int]]:
    ids = encode(m.spec.prompt_format, m.tokenizer, fields)
    return {"input_ids": ids[:m.spec.max_input_tokens]}   # the fine-tunes truncate at 256


def classify(m: Loaded, rows: Sequence[Mapping[str, str]]) -> list[dict[str, float]]:
    """Label probabilities for each row (a dict of the spec's input fields),
    padded to the longest row and run as one batch."""
    logits = m.backend.classify(m, [encode_inputs(m, r) for r in rows])
    return [dict(zip(m.spec.labels, map(float, p))) for p in torch.softmax(logits, -1)]


def score_pairs(m: Loaded, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """The scorers' single logit for each (question, answer) pair."""
    rows = [encode_pair(m.tokenizer, q, a, m.spec.max_input_tokens) for q, a in pairs]
    return [float(row[0]) for row in m.backend.classify(m, rows)]


def label_logprobs(m: Loaded, text: str) -> dict[str, float]:
    """Log-likelihood of each label word as the assistant's answer to the
    entry's system prompt and `text`. Each label is encoded together with
    the prompt (as the model would see it) and only the tokens after the
    part all sequences share are scored, so the comparison is exact."""
    fields = {"system": m.spec.system_prompt, "text": text}
    seqs = [encode(m.spec.prompt_format, m.tokenizer, {**fields, "answer": label})
            for label in m.spec.labels]
    shared = 0
    while all(len(s) > shared + 1 and s[shared] == seqs[0][shared] for s in seqs):
        shared += 1
    room = m.spec.max_input_tokens - m.backend.scoring_room
    # Keep the end, and at least one shared id: the first label token is scored after it.
    cut = max(0, min(max(map(len, seqs)) - room, shared - 1))
    seqs = [s[cut:] for s in seqs]
    shared -= cut
    scored = m.backend.continuation_logprobs(m, seqs[0][:shared], [s[shared:] for s in seqs])
    return {label: sum(row) for label, row in zip(m.spec.labels, scored)}


def score_labels(m: Loaded, text: str) -> dict[str, float]:
    """A distribution over the labels: softmax of their log-likelihoods."""
    lp = label_logprobs(m, text)
    probs = torch.softmax(torch.tensor(list(lp.values()), dtype=torch.float64), 0)
    return dict(zip(lp, map(float, probs)))


def batcher(m: Loaded) -> MicroBatcher:
    """The model's micro-batcher (one per loaded model, kept with it)."""
    if m.batcher is None:
        m.batcher = MicroBatcher(lambda rows: classify_chunk(m, rows))
    return m.batcher


def classify_chunk(m: Loaded, rows: Sequence[Mapping[str, str]]) -> list[dict[str, float]]:
    if m.spec.task == LABEL_SCORE:
        return [score_labels(m, r["text"]) for r in rows]
    return classify(m, rows)


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
                  stop: Callable[[], str | None] = lambda: None,
                  ) -> list[dict[str, float] | str]:
    """Label probabilities for each row, or the reason the row was skipped.
    Bad rows are reported, never abort the batch; good rows run in chunks,
    shortest first, so that a chunk's rows are padded to a length near
    their own. `stop()` is asked before each chunk: a reason ends the batch
    there, and the rows left get it."""
    out: list[dict[str, float] | str] = [row_error(m, r) or "" for r in rows]
    good = sorted((i for i, err in enumerate(out) if not err),
                  key=lambda i: sum(len(rows[i][f]) for f in m.spec.inputs))
    for start in range(0, len(good), BATCH_CHUNK):
        if why := stop():
            for i in good[start:]:
                out[i] = why
            break
        idx = good[start:start + BATCH_CHUNK]
        for i, p in zip(idx, classify_chunk(m, [rows[i] for i in idx])):
            out[i] = p
        progress(min(start + BATCH_CHUNK, len(good)), len(good))
    return out
