"""Prompt formats: how each model's input is turned into token ids.

A format is a function `(tokenizer, fields) -> list[int]`. Each is written as
a list of parts, where `Special` parts are the model's own tokens and plain
strings are text. The text, however it was typed, never becomes a special
token: a user who types `<|endofinstruction|>` gets those characters, not
Aira's separator.
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping, Sequence


class Special(str):
    """The name of a tokenizer attribute holding a special token
    (`"bos_token"`, `"sep_token"`, ...), used as a prompt part."""


# Tokenizers backed by `tokenizers` switch special-token parsing with a flag
# on the shared backend object, so encodes that flip it are serialised.
_split_lock = threading.Lock()


def encode_text(tokenizer, text: str) -> list[int]:
    """`text` as plain text: any special-token string in it is split into
    ordinary tokens."""
    with _split_lock:
        try:
            return tokenizer(text, add_special_tokens=False,
                             split_special_tokens=True)["input_ids"]
        finally:
            tokenizer._tokenizer.encode_special_tokens = False


def _special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def encode_parts(tokenizer, parts: Sequence[str], add_special_tokens: bool) -> list[int]:
    """Encode `parts` exactly as the model card does (one string through the
    tokenizer), unless a text part contains a special-token string; then
    that part is encoded on its own as plain text."""
    def token(p: Special) -> str:
        value = getattr(tokenizer, p)
        if value is None:
            raise ValueError(f"{type(tokenizer).__name__} has no {p}")
        return value

    specials = [t for t in map(str, tokenizer.all_special_tokens) if t]
    texts = [p for p in parts if not isinstance(p, Special)]
    if not any(s in t for t in texts for s in specials):
        joined = "".join(token(p) if isinstance(p, Special) else p for p in parts)
        return tokenizer(joined, add_special_tokens=add_special_tokens)["input_ids"]
    ids = tokenizer("", add_special_tokens=add_special_tokens)["input_ids"]
    prefix, suffix = ids, []
    if add_special_tokens and ids and ids[-1] in _special_ids(tokenizer) and len(ids) > 1:
        prefix, suffix = ids[:1], ids[1:]   # e.g. [CLS] ... [SEP]
    out = list(prefix)
    for p in parts:
        if isinstance(p, Special):
            out.append(tokenizer.convert_tokens_to_ids(token(p)))
        elif p:
            out += encode_text(tokenizer, p)
    return out + suffix


def _fmt(template: Callable[[Mapping[str, str]], list[str]], add_special_tokens=True):
    def format_(tokenizer, fields: Mapping[str, str]) -> list[int]:
        return encode_parts(tokenizer, template(fields), add_special_tokens)
    return format_


BOS, EOS, SEP = Special("bos_token"), Special("eos_token"), Special("sep_token")

FORMATS: dict[str, Callable] = {
    # TeenyTinyLlama: the tokenizer adds <s>.
    "plain": _fmt(lambda f: [f["text"]]),
    # AgNews fine-tune: title + "\n\n" + text.
    "title-text": _fmt(lambda f: [f["title"] + "\n\n" + f["text"]]),
    # FaQuAD-NLI fine-tune: question + bos + answer + eos.
    "question-answer": _fmt(lambda f: [f["question"], BOS, f["answer"], EOS]),
    # Assin2 fine-tune: bos + premise + bos + hypothesis + eos (the tokenizer
    # adds one more <s> in front).
    "premise-hypothesis": _fmt(lambda f: [BOS, f["premise"], BOS, f["hypothesis"], EOS]),
    # Aira-2's card: bos + question + sep, add_special_tokens=False.
    "aira": _fmt(lambda f: [BOS, f["text"], SEP], add_special_tokens=False),
    # TinyLlama-1.1B-Chat's template with a system and a user message and the
    # generation prompt; like apply_chat_template, no <s> is added.
    "zephyr-chat": _fmt(lambda f: ["<|system|>\n" + f["system"], EOS,
                                   "\n<|user|>\n" + f["text"], EOS,
                                   "\n<|assistant|>\n" + f.get("answer", "")],
                        add_special_tokens=False),
}


def encode_pair(tokenizer, first: str, second: str, max_length: int) -> dict:
    """A (question, answer) pair for the BERT scorers, both as plain text."""
    with _split_lock:
        try:
            return tokenizer(first, second, split_special_tokens=True, truncation=True,
                             max_length=max_length, return_tensors="pt")
        finally:
            tokenizer._tokenizer.encode_special_tokens = False


def encode(prompt_format: str, tokenizer, fields: Mapping[str, str]) -> list[int]:
    return FORMATS[prompt_format](tokenizer, fields)
