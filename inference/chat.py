"""Aira-2's chat format.

Aira was trained on `bos + prompt + sep + completion + eos` (its card), with
<|startofinstruction|>, <|endofinstruction|> and <|endofcompletion|>. It is
single-turn: by default only the last question is sent. With history on,
earlier turns go in the same token format, oldest dropped first, so that the
prompt and the answer fit the 1024-token context.
"""

from __future__ import annotations

from typing import Sequence

from .formats import BOS, EOS, SEP, encode_parts
from .generation import stream
from .sampling import Sampling
from .loading import Loaded

Turn = tuple[str, str]   # (question, answer)


def turn_parts(question: str, answer: str | None = None) -> list[str]:
    parts = [BOS, question, SEP]
    return parts + [answer, EOS] if answer is not None else parts


def format_prompt(tokenizer, question: str, history: Sequence[Turn] = (),
                  context: int = 1024, max_new_tokens: int = 200) -> list[int]:
    """Token ids for `question`, with as many of the latest `history` turns
    as fit before the answer's room."""
    ids = encode_parts(tokenizer, turn_parts(question), add_special_tokens=False)
    room = context - max_new_tokens
    if len(ids) > room:   # the question alone is too long: keep its end
        ids = ids[:1] + ids[len(ids) - room + 1:]
    for q, a in reversed(history):
        turn = encode_parts(tokenizer, turn_parts(q, a), add_special_tokens=False)
        if len(turn) + len(ids) > room:
            break
        ids = turn + ids
    return ids


def answer(m: Loaded, question: str, s: Sampling, history: Sequence[Turn] = (),
           cancel=None):
    """Stream Aira's answer; generation ends at <|endofcompletion|> (the
    model's eos) and special tokens never reach the text."""
    ids = format_prompt(m.tokenizer, question, history, m.spec.max_input_tokens, s.max_new_tokens)
    return stream(m, ids, s, cancel)
