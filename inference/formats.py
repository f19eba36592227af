"""Prompt formats: how each model's input is turned into token ids.

A format is a function `(tokenizer, fields) -> list[int]`. Each is written as
a list of parts, where `Special` parts are the model's own tokens and plain
strings are text. The text, however it was typed, never becomes a special
token: a user who types `<|endofinstruction|>` gets those characters, not
Aira's separator.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
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


# -- chat formats: a conversation as parts ---------------------------------
@dataclass(frozen=True)
class ChatFormat:
    """How a model's conversation is written: each role's message as parts,
    and the parts that ask for the answer."""
    roles: Mapping[str, Callable[[str], list[str]]]
    answer: tuple[str, ...] = ()
    add_special_tokens: bool = False

    def parts(self, messages: Sequence[Mapping[str, str]], answer: str = "") -> list[str]:
        out = [p for m in messages if m["role"] in self.roles
               for p in self.roles[m["role"]](m["content"])]
        return out + [*self.answer[:-1], self.answer[-1] + answer] if self.answer else out + [answer]


CHAT_FORMATS: dict[str, ChatFormat] = {
    # Aira-2's card: bos + question + sep, the answer, eos (single-turn: it
    # has no system message, and earlier turns are the same pattern).
    "aira": ChatFormat({"user": lambda c: [BOS, c, SEP], "assistant": lambda c: [c, EOS]}),
    # TinyLlama-1.1B-Chat's Zephyr template: a role tag, a newline, the
    # content, eos and a newline; like apply_chat_template, no <s>.
    "zephyr-chat": ChatFormat(
        {r: (lambda r: lambda c: [f"<|{r}|>\n" + c, EOS, "\n"])(r)
         for r in ("system", "user", "assistant")},
        answer=("<|assistant|>\n",)),
}


def encode_chat(name: str, tokenizer, messages: Sequence[Mapping[str, str]], room: int,
                answer: str = "") -> list[int]:
    """The conversation `messages` (ending with the user's message) in the
    model's chat format, asking for the answer: as many of the latest
    earlier turns as fit in `room` tokens, oldest dropped first, the system
    message always kept; a last message too long alone keeps its end."""
    fmt = CHAT_FORMATS[name]
    system = [m for m in messages if m["role"] == "system"][-1:]
    turns = [m for m in messages if m["role"] in ("user", "assistant")]

    def encoded(start: int) -> list[int]:
        return encode_parts(tokenizer, fmt.parts(system + turns[start:], answer),
                            fmt.add_special_tokens)

    ids = encoded(len(turns) - 1)
    if len(ids) > room:   # the question alone is too long: keep its end
        return ids[:1] + ids[len(ids) - room + 1:]
    for start in range(len(turns) - 2, -1, -1):
        if turns[start]["role"] != "user":
            continue
        longer = encoded(start)
        if len(longer) > room:
            break
        ids = longer
    return ids


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
    # A model fine-tuned here on text pairs (custom.py): the FaQuAD-NLI
    # fine-tune's joining, text + bos + second text + eos.
    "text-pair": _fmt(lambda f: [f["text"], BOS, f["text_b"], EOS]),
    # The chat models: one user message (and a system message where the
    # entry has one), in their chat format.
    **{name: (lambda fmt: lambda tokenizer, f: encode_parts(
        tokenizer, fmt.parts(([{"role": "system", "content": f["system"]}] if f.get("system") else [])
                             + [{"role": "user", "content": f["text"]}], f.get("answer", "")),
        fmt.add_special_tokens))(fmt) for name, fmt in CHAT_FORMATS.items()},
}


def encode_pair(tokenizer, first: str, second: str, max_length: int) -> dict[str, list[int]]:
    """A (question, answer) pair for the BERT scorers, both as plain text."""
    with _split_lock:
        try:
            enc = tokenizer(first, second, split_special_tokens=True, truncation=True,
                            max_length=max_length)
        finally:
            tokenizer._tokenizer.encode_special_tokens = False
    return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}


def encode(prompt_format: str, tokenizer, fields: Mapping[str, str]) -> list[int]:
    return FORMATS[prompt_format](tokenizer, fields)
