"""Generation: streaming token by token, with the sampling settings of the
model cards, stopping on each model's end token, and cancellation that
really stops the work.

Read top to bottom: `fit_context` (cut an over-long prompt) -> `stream`
(hand the prompt to the model's batch in decoder.py, yield text as it
comes). The settings are `sampling.Sampling`.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from .loading import Loaded
from .sampling import Drawn, Sampling
# A page gets at most ~25 updates a second: one per token (hundreds a second
# from a small model) makes the browser fall behind, and a Clear or a new
# question then lands before updates still queued for the old answer.
UPDATE_EVERY_S = 0.04


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


class Detokenizer:
    """Token ids in, text pieces out, one id at a time. It decodes only the
    last few ids, in the context of the token before them (SentencePiece
    drops the leading space of a token decoded alone), and holds a piece
    back while it ends in half a character (byte-fallback tokens). The
    prompt's last token is the first context, so that a continuation's first
    word keeps its space ("A lhama" + " é", not "é")."""

    def __init__(self, tokenizer, context: list[int] = ()):
        self.tokenizer, self.ids = tokenizer, list(context)
        self.prefix, self.read = 0, len(self.ids)   # ids[prefix:read] is context already shown

    def add(self, token: int) -> str:
        self.ids.append(token)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)
        before = decode(self.ids[self.prefix:self.read])
        text = decode(self.ids[self.prefix:])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]


class Stop:
    """A stream's own stop, which also reads its caller's: several streams of
    one request share the caller's cancel, and one ending must not stop the
    next."""

    def __init__(self, caller: threading.Event | None = None):
        self.caller, self.own = caller, threading.Event()

    def is_set(self) -> bool:
        return self.own.is_set() or (self.caller is not None and self.caller.is_set())

    def set(self) -> None:
        self.own.set()


def stream(m: Loaded, ids: list[int], s: Sampling,
           cancel: threading.Event | None = None) -> Iterator[str]:
    """Yield the new text piece by piece. Closing the iterator (a Gradio
    cancel, a closed page) or setting `cancel` takes the request out of the
    model's batch at the next token."""
    tokens = stream_tokens(m, ids, s, cancel)
    try:
        for text, _, _ in tokens:
            if text:
                yield text
    finally:
        tokens.close()   # stops decoding now, not when garbage is collected


def stream_tokens(m: Loaded, ids: list[int], s: Sampling, cancel: threading.Event | None = None,
                  ) -> Iterator[tuple[str, list[int], list[Drawn]]]:
    """As `stream`, with the new token ids so far and how each was drawn
    (`sampling.Drawn`) alongside each text piece; the last item has all of
    them (an end token included) and may carry no text. Pieces that arrive
    within UPDATE_EVERY_S of the last are joined. The tokens come from the
    model's backend (backends.py)."""
    cancel = Stop(cancel)
    tokens = m.backend.stream(m, ids, s, cancel)
    text, held, last, drawn = Detokenizer(m.tokenizer, ids[-1:]), "", 0.0, []
    try:
        for token in tokens:
            drawn.append(token)
            held += text.add(token.id)
            if held and time.monotonic() - last >= UPDATE_EVERY_S:
                yield held, [d.id for d in drawn], list(drawn)
                held, last = "", time.monotonic()
        yield held, [d.id for d in drawn], list(drawn)
    finally:
        cancel.set()
        tokens.close()   # out of the batch before the caller goes on


def complete(m: Loaded, ids: list[int], s: Sampling) -> str:
    return "".join(stream(m, ids, s))
