"""Models side by side, for an audience: one prompt streamed by 2 to 4
model@checkpoint columns at once (`compare`), the same as a blind A/B match
with a vote (`blind_match`, `vote`, `leaderboard`: votes.py keeps them), and
a text's perplexity under every training checkpoint of a model
(`timeline`). Reached through the request API (api.py), whose calls do the
work of each column.

    compare(engine, "A lhama é", ["ttl-160m@step100000", "ttl-160m@main"], seed=1)
        -> Plan, Column(0, Started), Column(1, Started), Column(1, Piece), ...
    timeline(engine, "Um texto.", "ttl-160m")  -> Point per checkpoint, in training order
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import random
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Callable, Iterator

from . import api, generation, standins, votes
from .engine import Engine
from .errors import EngineError
from .registry import GENERATE, REGISTRY, by_task

MAX_COLUMNS = 4
DEFAULT_COLUMNS = ("ttl-160m@step100000", "ttl-160m@main", "ttl-460m@main")
# Every column a person or a client can ask for, in the registry's order.
COLUMN_CHOICES = tuple(f"{s.key}@{r}" for s in by_task(GENERATE) for r in s.revisions)


def check_column(name) -> tuple[str, str]:
    """"key@revision" (or "key": its main) as (key, revision)."""
    if not isinstance(name, str) or not name.strip():
        raise EngineError(f"A column is a model and a checkpoint, as 'ttl-160m@step100000'; "
                          f"got {name!r}.", title="Invalid column")
    key, _, revision = name.strip().partition("@")
    spec = api.check_model(key, GENERATE)
    revision = revision or spec.revision
    if revision not in spec.revisions:
        raise EngineError(f"{spec.title} has no checkpoint {revision!r}. Choose one of: "
                          f"{', '.join(spec.revisions)}.", title="Invalid column")
    return key, revision


def check_columns(names, least: int = 2, most: int | None = MAX_COLUMNS) -> list[tuple[str, str]]:
    """`least` to `most` distinct columns."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not isinstance(names, (list, tuple)):
        raise EngineError("The columns must be a list of 'key@revision' names.",
                          title="Invalid column")
    columns = [check_column(n) for n in names]
    if len(set(columns)) < len(columns):
        raise EngineError("Each column must be a different model or checkpoint.",
                          title="Invalid column")
    if len(columns) < least or (most is not None and len(columns) > most):
        span = f"{least} to {most}" if most else f"at least {least}"
        raise EngineError(f"Choose {span} columns; {len(columns)} chosen.", title="Invalid column")
    return columns


def name(column: tuple[str, str]) -> str:
    return "@".join(column)


# -- side by side ------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What a compare request runs: its columns, the one seed they share,
    and whether they stream at once or, when their models would not fit
    the memory budget together, one after another (`note` says so)."""
    columns: list[tuple[str, str]]
    seed: int | None
    together: bool
    note: str | None


@dataclass(frozen=True)
class Column:
    """An event (api.Started or api.Piece) of column `index`."""
    index: int
    event: api.Started | api.Piece


def plan(engine: Engine, columns: list[tuple[str, str]], seed: int | None) -> Plan:
    """Columns stream at once when their models' loads, summed, fit the
    memory budget: a model in use is never let go, so models held together
    must fit together."""
    need = sum(engine.load_cost(key) for key, _ in columns)   # each checkpoint a load of its own
    if need <= engine.budget:
        return Plan(columns, seed, True, None)
    return Plan(columns, seed, False,
                f"These {len(columns)} models need about {need // 2 ** 20:,} MB together, over "
                f"the memory budget of {engine.budget // 2 ** 20:,} MB: the columns run one "
                f"after another, each model let go as needed.")


def _settings(columns, settings: dict) -> tuple[int | None, dict]:
    """Every column's settings checked before any work, and the one seed
    they share (drawn here when none is given, so that it can be shown)."""
    samplings = [api.sampling(REGISTRY[key], settings) for key, _ in columns]
    drawn = api._drawn_seed(samplings[0])
    seed = drawn.seed if drawn.do_sample else None
    return seed, {**settings, "seed": seed}


def _columns(engine: Engine, text: str, p: Plan, settings: dict, status,
             cancel: threading.Event) -> Iterator[Column]:
    def stream(index: int) -> Callable[[], Iterator]:
        key, revision = p.columns[index]
        return lambda: api.generate(engine, key, text, revision, 1, status, cancel, **settings)
    streams = [stream(i) for i in range(len(p.columns))]
    if p.together:
        for index, event in merged(streams, cancel):
            yield Column(index, event)
        return
    for index, make in enumerate(streams):
        with contextlib.closing(make()) as events:
            for event in events:
                yield Column(index, event)


def merged(streams: list[Callable[[], Iterator]], cancel: threading.Event) -> Iterator[tuple]:
    """(index, item) of every stream as it comes, each stream consumed on a
    thread of its own, so that they run at once (their forward passes all
    go to the engine's one compute thread, which takes turns between
    models). The first error ends them all; closing this iterator sets
    `cancel` and waits for the threads, so that no column goes on
    computing for nobody."""
    queue: SimpleQueue = SimpleQueue()
    end = object()

    def run(index: int, make: Callable[[], Iterator]) -> None:
        try:
            with contextlib.closing(make()) as items:
                for item in items:
                    queue.put((index, item))
                    if cancel.is_set():
                        break
        except BaseException as exc:   # handed to the consumer, raised there
            queue.put((index, exc))
        finally:
            queue.put((index, end))
    # Each thread with a copy of the caller's context: Gradio finds the
    # request's progress bar through it.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(run, i, make),
                                name=f"compare-column-{i}", daemon=True)
               for i, make in enumerate(streams)]
    for t in threads:
        t.start()
    try:
        running = len(threads)
        while running:
            index, item = queue.get()
            if item is end:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        cancel.set()
        for t in threads:
            t.join()


def compare(engine: Engine, text: str, columns, status=api._quiet,
            cancel: threading.Event | None = None, **settings) -> Iterator[Plan | Column]:
    """`text` continued by each column (a model at a checkpoint) with the
    same sampling and the same seed: a Plan, then each column's Started and
    Pieces as they come. Closing the iterator stops every column."""
    text = api.check_text(text, "prompt")
    columns = check_columns(columns)
    seed, settings = _settings(columns, settings)
    p = plan(engine, columns, seed)
    yield p
    yield from _columns(engine, text, p, settings, status, cancel or threading.Event())


# -- blind A/B ---------------------------------------------------------------------
@dataclass(frozen=True)
class Issued:
    """The end of a blind match: the id its vote names."""
    match: str


def blind_match(engine: Engine, text: str, pool=(), status=api._quiet,
                cancel: threading.Event | None = None,
                **settings) -> Iterator[Plan | Column | Issued]:
    """Two distinct columns drawn at random from `pool` (empty: every
    checkpoint), streamed as compare does; once both have finished, the
    match is issued (votes.py) and its id is the last event. A stopped
    match is not issued: nobody saw both answers."""
    text = api.check_text(text, "prompt")
    pool = check_columns(list(pool) or list(COLUMN_CHOICES), least=2, most=None)
    columns = random.sample(pool, 2)
    seed, settings = _settings(columns, settings)
    p = plan(engine, columns, seed)
    yield p
    # The columns' own stop (set when they end), which also reads the caller's.
    yield from _columns(engine, text, p, settings, status, generation.Stop(cancel))
    if cancel is None or not cancel.is_set():
        yield Issued(votes.issue(engine.settings.data_dir, name(columns[0]), name(columns[1])))


def vote(engine: Engine, match, choice) -> votes.Vote:
    """A vote ("A", "B" or "tie") for a match this app issued, once."""
    return votes.record(engine.settings.data_dir, match, choice)


def leaderboard(engine: Engine) -> list[votes.Standing]:
    return votes.standings(engine.settings.data_dir)


# -- training timeline ----------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """A text's perplexity under one checkpoint."""
    revision: str
    step: int | None          # training step; None for main (the end of training)
    perplexity: float
    tokens: int               # tokens scored
    label: str
    is_standin: bool
    cached: bool              # measured earlier, read from the cache


def training_order(key: str) -> list[str]:
    """A model's checkpoints by training step, main (the finished model) last."""
    steps = [r for r in REGISTRY[key].revisions if r.startswith("step")]
    return sorted(steps, key=lambda r: int(r.removeprefix("step"))) + \
        [r for r in REGISTRY[key].revisions if not r.startswith("step")]


def timeline(engine: Engine, text: str, key: str = "ttl-160m", status=api._quiet,
             cancel: threading.Event | None = None) -> Iterator[Point]:
    """The perplexity of `text` under every checkpoint of `key`, in training
    order, each checkpoint loaded in turn (the engine keeps two of a model
    and lets the older go). Points measured before for the same text, model
    and serving setup come from a cache under the data folder."""
    spec = api.check_model(key, GENERATE)
    text = api.check_text(text, "text to score")
    digest = hashlib.sha256(text.encode()).hexdigest()
    where = origin(engine, key)
    order = training_order(key)
    for i, revision in enumerate(order):
        if cancel is not None and cancel.is_set():
            return
        step = int(revision.removeprefix("step")) if revision.startswith("step") else None
        kept = _cached(engine, key, revision, where, digest)
        if kept:
            yield Point(revision, step, *kept, cached=True)
            continue
        status(f"Checkpoint {i + 1} of {len(order)}: loading {spec.title} at {revision}…")
        scored = api.perplexity(engine, key, text, revision, status)
        point = Point(revision, step, scored.perplexity.value, len(scored.perplexity.tokens),
                      scored.label, scored.is_standin, cached=False)
        # A stand-in serving after a failed load is not what was asked for.
        if scored.is_standin == engine.settings.standin:
            _keep(engine, key, revision, where, digest, point)
        yield point


def origin(engine: Engine, key: str) -> str:
    """What serves `key` here, as far as it changes a perplexity: the
    weights' source and how they are computed. Part of the cache's key."""
    s = engine.settings
    weights = (f"stand-in {standins.VERSION} {'full' if s.full_size_standins else 'tiny'}"
               if s.standin else s.local_dirs.get(key) or REGISTRY[key].hub_id)
    return (f"{weights} · {s.backend_for(key, engine.device)} · {engine.device.type} · "
            f"{engine.dtype} · fast {s.fast}")


CACHE_FILE = "timeline.sqlite3"
CACHE_SCHEMA = """CREATE TABLE IF NOT EXISTS points (
    key TEXT, revision TEXT, origin TEXT, text_sha256 TEXT, perplexity REAL, tokens INTEGER,
    label TEXT, is_standin INTEGER, PRIMARY KEY (key, revision, origin, text_sha256))"""


def _cache(engine: Engine) -> sqlite3.Connection:
    return votes.connect(engine.settings.data_dir, CACHE_FILE, CACHE_SCHEMA)


def _cached(engine, key, revision, where, digest) -> tuple | None:
    with closing(_cache(engine)) as db:
        row = db.execute("SELECT perplexity, tokens, label, is_standin FROM points WHERE key = ? "
                         "AND revision = ? AND origin = ? AND text_sha256 = ?",
                         (key, revision, where, digest)).fetchone()
    return row and (row[0], row[1], row[2], bool(row[3]))


def _keep(engine, key, revision, where, digest, point: Point) -> None:
    with closing(_cache(engine)) as db, db:
        db.execute("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (key, revision, where, digest, point.perplexity, point.tokens, point.label,
                    int(point.is_standin)))

