"""The request API: the one way in for every front end (the page's tabs
today; an OpenAI-compatible server or MCP tools tomorrow). Each call takes
the engine and plain values, validates every one of them before any work is
done, and raises `EngineError` with a message for people when it refuses.
Requests are put together here (prompt formats, context fitting, the seed
of each completion, best-of-n), and the compute is the model's backend's.

    generate(engine, "ttl-160m", "A PUCRS é", n=2, seed=1)   -> Started, Piece, Piece, ...
    chat(engine, "aira-2-124m", messages, n=4)                -> Started, Piece..., Answer
    classify(engine, "ttl-160m-imdb", {"text": ...})          -> Labels
    classify_batch(engine, key, rows, progress)               -> Batch
    perplexity(engine, "ttl-160m", text)                      -> TextScore
    explain(engine, key, revision, prompt, drawn)             -> [TokenInfo]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import random
import threading
import time
import unicodedata
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Callable, Iterator, Mapping, Sequence

from . import (analysis, bestofn, classification, custom, faults, finetune, formats, generation,
               measure)
from .errors import EngineError, ModelUnavailable, OutOfMemory
from .engine import Engine
from .loading import Loaded
from .registry import CHAT, CLASSIFY, GENERATE, LABEL_SCORE, REGISTRY, SCORE, ModelSpec, by_task
from .sampling import MAX_NEW_TOKENS_CAP, MAX_SEED, Drawn, Sampling, for_completion  # noqa: F401 (front ends read the caps here)
from .generation import UPDATE_EVERY_S  # noqa: F401 (how often a page is updated, front ends read it here)

MAX_TEXT_CHARS = 20_000   # ~5k tokens: more than any served context holds
MAX_COMPLETIONS = 4
MAX_CANDIDATES = bestofn.MAX_CANDIDATES
TOXICITY_THRESHOLD = bestofn.TOXICITY_THRESHOLD
MAX_MESSAGES = 64          # a chat's history, with the new question
MAX_HISTORY_CHARS = 100_000
MAX_BATCH_ROWS = 1000
MAX_BATCH_SECONDS = 120    # a batch's rows after this are reported, not classified
FREE_ANSWER_TOKENS = 8
MIN_QUESTION_TOKENS = 64   # a chat's answer may not take the whole context

TASK_NAMES = {GENERATE: "text-generation model", CHAT: "chat model", CLASSIFY: "classifier",
              LABEL_SCORE: "classifier", SCORE: "scorer"}
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens",
                   "do_sample", "seed")

Status = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


# -- validation --------------------------------------------------------------
def check_text(text, what: str = "text", allow_empty: bool = False) -> str:
    """Text from a person or a client: a string, not blank, not huge."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise EngineError(f"The {what} must be text.")
    # Control characters other than newlines and tabs are dropped: they
    # carry nothing a model was trained on and break some tokenizers'
    # offsets. Lone surrogates cannot be encoded at all.
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"))
    if not allow_empty and not text.strip():
        raise EngineError(f"Please type some {what} first.", title="Nothing to do")
    if len(text) > MAX_TEXT_CHARS:
        raise EngineError(f"The {what} is {len(text):,} characters long; the limit is "
                          f"{MAX_TEXT_CHARS:,}.", title="Too long")
    return text


def check_count(n, most: int, what: str) -> int:
    """A count: a whole number from 1 to `most` (`what` starts the message)."""
    if isinstance(n, str) and n.strip().isdigit():   # a Radio's value from a client
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) \
            or n != int(n) or not 1 <= n <= most:
        raise EngineError(f"{what} must be a whole number from 1 to {most}, got {n!r}.",
                          title="Invalid setting")
    return int(n)


def check_model(key, *tasks: str, engine: Engine | None = None) -> ModelSpec:
    """A model key: known and serving one of `tasks` (a classifier key sent
    to generate is refused, not loaded). With `engine`, the models
    fine-tuned here (`custom/<name>`) are known too."""
    try:
        spec = engine.spec(key) if engine is not None else REGISTRY[key]
    except (KeyError, TypeError):
        spec = None
    if spec is not None and spec.task in tasks:
        return spec
    allowed = [s.key for s in (engine.models(*tasks) if engine is not None else by_task(*tasks))]
    msg = (f"{key!r} is not a {TASK_NAMES[tasks[0]]}." if spec is not None
           else f"Unknown model {key!r}.")
    raise ModelUnavailable(f"{msg} Choose one of: {', '.join(allowed)}.")


def sampling(spec: ModelSpec, settings: Mapping) -> Sampling:
    """The model card's defaults with `settings` (None: the default) applied."""
    unknown = set(settings) - set(SAMPLING_FIELDS)
    if unknown:
        raise EngineError(f"Unknown sampling settings: {', '.join(sorted(unknown))}.")
    try:
        return Sampling.from_defaults(spec.defaults, **settings)
    except ValueError as exc:
        raise EngineError(str(exc), title="Invalid setting") from None


def memory_errors(fn):
    """Running out of memory (CUDA, MPS or CPU) frees what the request held
    and becomes an `OutOfMemory`; the app keeps serving."""
    def explain(exc: BaseException):
        if not faults.is_out_of_memory(exc):
            raise exc
        faults.free_memory()
        raise OutOfMemory() from None

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except (RuntimeError, MemoryError) as exc:
                explain(exc)
        return streaming

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, MemoryError) as exc:
            explain(exc)
    return plain


# -- generation ----------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    """A generate or chat request, accepted: what it runs on."""
    key: str
    revision: str
    prompt: list[int]             # the prompt's token ids, as the model gets them
    dropped: int                  # tokens cut from the prompt's left to fit the context
    samplings: list[Sampling]     # one per completion or candidate, seeds filled in
    label: str                    # device · dtype · road · stand-in
    notice: str | None            # the banner when serving a stand-in
    context: int
    # "Why this token?" for (ids before, drawn tokens) with this request's
    # tokenizer, whatever the engine loads meanwhile.
    explain: Callable[[list[int], list[Drawn]], list[analysis.TokenInfo]] = field(repr=False)


@dataclass(frozen=True)
class Piece:
    """New text of completion (or candidate) `index`, with every token id
    so far and how each was drawn."""
    index: int
    text: str
    ids: list[int]
    drawn: list[Drawn]


def _drawn_seed(s: Sampling) -> Sampling:
    """A random seed drawn here, so that it can be shown and the text
    reproduced (a seed reproduces a text when the model serves it alone)."""
    if s.seed is None and s.do_sample:
        return dataclasses.replace(s, seed=random.randrange(MAX_SEED))
    return s


class Cancel:
    """A request's cancel: `set()` stops all of it, `drop(i)` only its
    completion i (an API choice that reached its stop string)."""

    def __init__(self):
        self._all, self._dropped = threading.Event(), set()

    def set(self) -> None:
        self._all.set()

    def is_set(self) -> bool:
        return self._all.is_set()

    def drop(self, index: int) -> None:
        self._dropped.add(index)

    def of(self, index: int) -> "_One":
        return _One(self, index)


@dataclass(frozen=True)
class _One:
    request: Cancel
    index: int

    def is_set(self) -> bool:
        return self.request.is_set() or self.index in self.request._dropped


def _stream(m: Loaded, ids: list[int], samplings: list[Sampling],
            cancel: threading.Event | Cancel | None) -> Iterator[Piece]:
    """Every completion's pieces, as they come. Up to `backend.at_once` of
    them decode at the same time, as rows of one batch (on a CPU a step of
    four rows costs 1.3-2.3x one row's; the later ones copy the prompt's
    keys and values from the first, decoder.py), each read by a thread of
    its own so that one waiting for a row holds up no other. Where only one
    may (transformers' `generate`, an inline worker), one after the other
    on the caller's thread."""
    stops = [generation.Stop(cancel.of(i) if isinstance(cancel, Cancel) else cancel)
             for i in range(len(samplings))]
    at_once = min(m.backend.at_once(m), len(samplings))

    def pieces(i: int, s: Sampling) -> Iterator[Piece]:
        if not stops[i].is_set():
            for piece in generation.stream_tokens(m, ids, s, stops[i]):
                yield Piece(i, *piece)
    if at_once == 1:
        for i, s in enumerate(samplings):
            yield from pieces(i, s)
        return
    todo, out = deque(enumerate(samplings)), SimpleQueue()

    def work():   # the next completion in order, until none is left
        try:
            while True:
                try:
                    i, s = todo.popleft()   # atomic across threads
                except IndexError:
                    break
                for piece in pieces(i, s):
                    out.put(piece)
            out.put(None)
        except BaseException as exc:   # the caller raises it
            out.put(exc)
    workers = [threading.Thread(target=work, name="completions", daemon=True) for _ in range(at_once)]
    for t in workers:
        t.start()
    try:
        done = 0
        while done < len(workers):
            item = out.get()
            if isinstance(item, Piece):
                yield item
            elif item is None:
                done += 1
            else:
                raise item
    finally:   # closed (a Stop) or failed: every completion ends at its next token
        for stop in stops:
            stop.set()
        for t in workers:
            t.join(timeout=10)


@memory_errors
def generate(engine: Engine, key: str, text: str, revision: str | None = None, n: int = 1,
             status: Status = _quiet, cancel: threading.Event | None = None,
             **settings) -> Iterator[Started | Piece]:
    """`n` continuations of `text` (decoded together where the backend
    allows, `_stream`), completion k with seed + k. Closing the iterator
    stops the work at the next token."""
    spec = check_model(key, GENERATE)
    text = check_text(text, "prompt")
    n = check_count(n, MAX_COMPLETIONS, "Completions")
    s = _drawn_seed(sampling(spec, settings))
    with engine.hold(key, revision, status) as m:
        ids = formats.encode(spec.prompt_format, m.tokenizer, {"text": text})
        ids, dropped = generation.fit_context(ids, spec.max_input_tokens, s.max_new_tokens,
                                              keep_first=1)
        samplings = [for_completion(s, i) for i in range(n)]
        yield Started(key, m.revision, ids, dropped, samplings, m.label, m.banner,
                      spec.max_input_tokens, functools.partial(analysis.explain, m.tokenizer))
        yield from _stream(m, ids, samplings, cancel)


# -- chat ------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """The end of a chat request: every candidate with its scores, the one
    chosen (None: every candidate was flagged), and notes on what was
    missing (a scorer that could not be loaded)."""
    candidates: list[bestofn.Candidate]
    best: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str | None:
        return None if self.best is None else self.candidates[self.best].text


# What best-of-n loses when a scorer is missing: chat goes on without it.
WITHOUT = {"reward": "candidates are not ranked (the first one not flagged is shown)",
           "guard": "candidates are not checked for toxicity"}


def check_messages(messages) -> list[dict[str, str]]:
    """A conversation from a person or a client: a list of {"role", "content"}
    messages (roles system, user, assistant), bounded in count and size,
    ending with the user's message."""
    if not isinstance(messages, list) or not messages:
        raise EngineError("The messages must be a non-empty list of {role, content} objects.")
    if len(messages) > MAX_MESSAGES:
        raise EngineError(f"{len(messages)} messages; the limit is {MAX_MESSAGES}.",
                          title="Too long")
    out, total = [], 0
    for msg in messages:
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise EngineError("Each message must be {role, content} with role system, user "
                              "or assistant.")
        what = {"user": "question", "assistant": "answer", "system": "system message"}[msg["role"]]
        content = check_text(msg.get("content"), what, allow_empty=True)
        total += len(content)
        out.append({"role": msg["role"], "content": content})
    if total > MAX_HISTORY_CHARS:
        raise EngineError(f"The conversation is {total:,} characters long; the limit is "
                          f"{MAX_HISTORY_CHARS:,}.", title="Too long")
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise EngineError("Please type some question first.", title="Nothing to do")
    return out


def _scorer(engine: Engine, key: str | None, what: str, notes: list[str],
            status: Status) -> Loaded | None:
    if key is None:
        return None
    try:
        m = engine.load(key, status=status)
    except ModelUnavailable as exc:
        notes.append(f"⚠️ {exc} Chat goes on without it: {WITHOUT[what]}.")
        return None
    if m.banner:
        notes.append(m.banner)
    return m


@memory_errors
def chat(engine: Engine, key: str, messages, n: int = 1, status: Status = _quiet,
         cancel: threading.Event | None = None, rank: bool = True,
         **settings) -> Iterator[Started | Piece | Answer]:
    """The model's answer to the last message of `messages` (earlier turns
    as they fit the context; the entry's system prompt when none is given).
    With n > 1, n candidates stream (together where the backend allows,
    `_stream`), then (with `rank`) the entry's
    reward model ranks them and its guardrail drops toxic ones."""
    spec = check_model(key, CHAT, LABEL_SCORE)
    messages = check_messages(messages)
    if spec.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": spec.system_prompt}] + messages
    n = check_count(n, MAX_CANDIDATES, "The number of candidates")
    s = sampling(spec, settings)
    room = spec.max_input_tokens - s.max_new_tokens
    if room < MIN_QUESTION_TOKENS:
        most = spec.max_input_tokens - MIN_QUESTION_TOKENS
        raise EngineError(f"max_new_tokens {s.max_new_tokens} leaves no room for the question in "
                          f"{spec.title}'s {spec.max_input_tokens}-token context; at most {most}.",
                          title="Invalid setting")
    with engine.hold(key, None, status) as m:
        ids = formats.encode_chat(spec.prompt_format, m.tokenizer, messages, room)
        samplings = [for_completion(s, i) for i in range(n)]
        yield Started(key, m.revision, ids, 0, samplings, m.label, m.banner,
                      spec.max_input_tokens, functools.partial(analysis.explain, m.tokenizer))
        texts = [""] * n
        for piece in _stream(m, ids, samplings, cancel):
            texts[piece.index] += piece.text
            yield piece
    texts = [t.strip() for t in texts]
    if n == 1 or not rank:
        yield Answer([bestofn.Candidate(t) for t in texts], 0)
        return
    status("Scoring the candidates")
    notes: list[str] = []
    reward = _scorer(engine, spec.reward_model, "reward", notes, status)
    guard = _scorer(engine, spec.guard_model, "guard", notes, status)
    question = messages[-1]["content"]
    candidates = bestofn.score(question, texts, reward, guard)
    yield Answer(candidates, bestofn.pick(candidates), notes)


# -- classification ----------------------------------------------------------------
@dataclass(frozen=True)
class Labels:
    probs: dict[str, float]
    notice: str | None


def check_fields(spec: ModelSpec, fields) -> dict[str, str]:
    if not isinstance(fields, Mapping):
        raise EngineError(f"The input must be an object with {', '.join(spec.inputs)}.")
    return {name: check_text(fields.get(name), name) for name in spec.inputs}


@memory_errors
def classify(engine: Engine, key: str, fields, status: Status = _quiet) -> Labels:
    """Label probabilities for one input (the entry's named text fields:
    `text`, or e.g. `premise` and `hypothesis`)."""
    spec = check_model(key, CLASSIFY, LABEL_SCORE, engine=engine)
    fields = check_fields(spec, fields)
    with engine.hold(key, None, status) as m:
        return Labels(classification.classify_one(m, fields), m.banner)


@dataclass(frozen=True)
class Batch:
    results: list[dict[str, float] | str]   # per row: label probabilities, or why it was skipped
    notice: str | None


@memory_errors
def classify_batch(engine: Engine, key: str, rows, progress: Callable[[int, int], None] = None,
                   status: Status = _quiet, cancel=None) -> Batch:
    """Label probabilities for each row; a bad row is reported, never stops
    the batch. A cancel (anything with `is_set()`), or MAX_BATCH_SECONDS
    passing, ends it between two chunks of rows; the rows left say why they
    were not classified."""
    check_model(key, CLASSIFY, LABEL_SCORE, engine=engine)
    if not isinstance(rows, list) or not rows:
        raise EngineError("Upload a CSV or paste one text per line.", title="Nothing to do")
    if len(rows) > MAX_BATCH_ROWS:
        raise EngineError(f"{len(rows):,} rows; the limit is {MAX_BATCH_ROWS:,}.",
                          title="Too many rows")
    deadline = time.monotonic() + MAX_BATCH_SECONDS

    def stop() -> str | None:
        if cancel is not None and cancel.is_set():
            return "not classified: the batch was stopped"
        if time.monotonic() > deadline:
            return f"not classified: the batch's time limit ({MAX_BATCH_SECONDS} s) was reached"
        return None
    with engine.hold(key, None, status) as m:
        results = classification.classify_rows(m, rows, progress or (lambda done, total: None),
                                               stop)
        return Batch(results, m.banner)


@memory_errors
def free_answer(engine: Engine, key: str, text: str) -> str:
    """What a label-scoring model answers when it is free to write (greedy,
    a few tokens): the tweet adapter's seed notes it does not reliably
    answer with one word."""
    spec = check_model(key, LABEL_SCORE)
    text = check_text(text, "text")
    s = Sampling.from_defaults(spec.defaults, max_new_tokens=FREE_ANSWER_TOKENS, do_sample=False,
                               repetition_penalty=1.0)
    with engine.hold(key) as m:
        ids = formats.encode(spec.prompt_format, m.tokenizer,
                             {"system": spec.system_prompt, "text": text})
        ids, _ = generation.fit_context(ids, spec.max_input_tokens, FREE_ANSWER_TOKENS,
                                        keep_first=1)
        return generation.complete(m, ids, s).strip()


# -- looking inside ------------------------------------------------------------------
@dataclass(frozen=True)
class TextScore:
    perplexity: analysis.Perplexity
    label: str
    revision: str
    notice: str | None
    is_standin: bool


@memory_errors
def perplexity(engine: Engine, key: str, text: str, revision: str | None = None,
               status: Status = _quiet) -> TextScore:
    """The perplexity of `text` under a text-generation model, each token's
    probability and the top alternatives there."""
    spec = check_model(key, GENERATE)
    text = check_text(text, "text to score")
    with engine.hold(key, revision, status) as m:
        ids = formats.encode(spec.prompt_format, m.tokenizer, {"text": text})
        return TextScore(analysis.perplexity(m, ids), m.label, m.revision, m.banner,
                         m.is_standin)


def explain(engine: Engine, key: str, revision: str | None, prompt: list[int],
            drawn: Sequence) -> list[analysis.TokenInfo]:
    """"Why this token?" for tokens a generate request returned: `drawn` as
    `Drawn`s, or as the plain [id, prob, [[id, prob], ...]] a page keeps."""
    spec = check_model(key, GENERATE, CHAT, LABEL_SCORE)
    try:
        prompt = [int(i) for i in prompt]
        drawn = [d if isinstance(d, Drawn) else
                 Drawn(int(d[0]), float(d[1]), tuple((int(i), float(p)) for i, p in d[2]))
                 for d in drawn]
        if len(prompt) + len(drawn) > spec.max_input_tokens:
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise EngineError("This is not a run the engine made.", title="Nothing to explain") from None
    m = engine.load(key, revision)   # its tokenizer only
    vocab = max(len(m.tokenizer), getattr(m.config, "vocab_size", 0) or 0)
    if any(not 0 <= i < vocab for i in prompt + [d.id for d in drawn]):
        raise EngineError("This is not a run the engine made.", title="Nothing to explain")
    return analysis.explain(m.tokenizer, prompt, drawn)


def decoding_speeds(engine: Engine, text: str, status: Status = _quiet) -> list[tuple]:
    """(title, revision, label, new tokens, seconds) of every generative
    model loaded now, each decoding greedily after `text`."""
    text = check_text(text)
    rows = []
    for m in engine.loaded():
        if m.spec.is_generative:
            status(f"Timing {m.spec.title}…")
            speed = measure.decoding_speed(m, text[:500])
            rows.append((m.spec.title, m.revision, m.label, speed))
    return rows


# -- fine-tuning ---------------------------------------------------------------------
def models(engine: Engine, *tasks: str) -> list[ModelSpec]:
    """Every model serving `tasks`: the registry's, then those fine-tuned here."""
    return engine.models(*tasks)


def read_training_file(path) -> finetune.Table:
    """A training table from an uploaded TSV or CSV (finetune.read_table)."""
    if not isinstance(path, str) or not path:
        raise EngineError("Upload a TSV or CSV file first.", title="Nothing to do")
    p = Path(path)
    if not p.is_file():
        raise EngineError("The uploaded file is gone: upload it again.", title="Nothing to do")
    size = p.stat().st_size
    if size > finetune.LIMITS.file_bytes:
        raise EngineError(f"The file is {size:,} bytes; the limit is "
                          f"{finetune.LIMITS.file_bytes:,}.", title="File too large")
    return finetune.read_table(p.read_bytes(), p.name)


def check_new_name(engine: Engine, name, overwrite: bool) -> str:
    try:
        name = custom.check_name(name)
    except ValueError as exc:
        raise EngineError(str(exc), title="Invalid name") from None
    if custom.folder(engine.settings.data_dir, name).exists() and overwrite is not True:
        raise EngineError(f"{custom.PREFIX}{name} exists already: choose another name, or "
                          "allow replacing it.", title="Name taken")
    return name


FINETUNE_POLL_S = 0.5   # a job's progress is sent at least this often


@memory_errors
def finetune_run(engine: Engine, table: finetune.Table, name: str, base: str = "ttl-160m",
                 method: str = "lora", epochs=3, learning_rate=4e-5, max_length=256,
                 eval_share=0.2, overwrite: bool = False, run_id: str | None = None,
                 cancel=None) -> Iterator[finetune.Progress | finetune.Done]:
    """Fine-tune `base` on `table` into `custom/<name>`: Progress snapshots
    (at least every FINETUNE_POLL_S), then Done. One job runs at a time; a
    second waits for it, saying so. `stop_finetune(run_id)`, `cancel`
    (anything with `is_set()`) or closing the iterator stops training after
    the step running; what was trained is then evaluated and saved."""
    plan = finetune.check_plan(base, method, epochs, learning_rate, max_length, eval_share)
    name = check_new_name(engine, name, overwrite)
    if not isinstance(table, finetune.Table):
        raise EngineError("Upload a TSV or CSV file first.", title="Nothing to do")
    events: SimpleQueue = SimpleQueue()
    stop = threading.Event()
    run_id = run_id or uuid.uuid4().hex

    class Stop:   # what the training callback asks
        @staticmethod
        def is_set() -> bool:
            return stop.is_set() or (cancel is not None and cancel.is_set())

    def run():
        try:
            with engine.jobs.one(run_id, stop, lambda: events.put(finetune.Progress(
                    "Another fine-tuning job is running: this one starts when it ends "
                    "(one at a time)."))):
                events.put(finetune.train(engine, table, plan, name, Stop, events.put))
        except BaseException as exc:   # raised below, on the caller's thread
            events.put(exc)

    threading.Thread(target=run, name="finetune", daemon=True).start()
    last = finetune.Progress("Waiting to start…")
    try:
        while True:
            try:
                event = events.get(timeout=FINETUNE_POLL_S)
            except Empty:
                event = last
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, finetune.Done):
                return
            last = event
    finally:
        stop.set()   # a caller that left: training stops, what was trained is saved


def stop_finetune(engine: Engine, run_id) -> bool:
    """Stop the job `run_id` after its current step (its model is saved)."""
    return isinstance(run_id, str) and engine.jobs.stop(run_id)


# -- side by side: compare, blind A/B and votes, the training timeline (compare.py) --
from .compare import (COLUMN_CHOICES, DEFAULT_COLUMNS, MAX_COLUMNS, Column, Issued, Plan,  # noqa: E402,F401
                      Point, blind_match, compare, leaderboard, timeline, training_order, vote,
                      name as column_name)
from .votes import CHOICES as VOTE_CHOICES, Standing, Vote  # noqa: E402,F401
