"""What every tab shares: loading a model with progress and a banner, and
turning engine errors into messages people can act on."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import unicodedata
from pathlib import Path

import gradio as gr

from inference import faults
from inference.loading import Engine, Loaded, ModelUnavailable
from inference.registry import (CHAT, CLASSIFY, GENERATE, LABEL_SCORE, REGISTRY, SCORE,
                                ModelSpec, by_task)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MAX_TEXT_CHARS = 20_000   # ~5k tokens: more than any served context holds


def on_gpu(engine: Engine, handler):
    """`handler` as it is, or, on a ZeroGPU Space (the engine in ZeroGPU mode
    and the `spaces` package present), under `spaces.GPU`, which holds a GPU
    for the duration of each call."""
    if engine.settings.zero_gpu and importlib.util.find_spec("spaces"):
        import spaces
        return spaces.GPU(handler)
    return handler


def bind(fn, engine: Engine):
    """A tab's handler with the engine bound (see `on_gpu`)."""
    return on_gpu(engine, functools.partial(fn, engine))


def load(engine: Engine, key: str, revision: str | None = None,
         progress: gr.Progress | None = None) -> Loaded:
    """The model for `key`, with its download or load shown as progress, or
    a gr.Error saying what failed and how to fix it."""
    def status(msg: str) -> None:
        if progress is not None:
            progress(None, desc=msg)
    try:
        return engine.load(key, revision, status=status)
    except (ModelUnavailable, KeyError) as exc:
        raise gr.Error(str(exc).strip("'\""), title="Model unavailable") from None


def notice(m: Loaded) -> gr.Markdown:
    """The tab's banner: shown when the tab serves a stand-in."""
    return gr.Markdown(m.notice or "", visible=bool(m.notice))


def check_count(n, most: int, what: str) -> int:
    """A count from the UI or an API client: a whole number from 1 to `most`
    (`what` starts the message, e.g. "Completions")."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) \
            or not 1 <= n <= most:
        raise gr.Error(f"{what} must be a whole number from 1 to {most}, got {n!r}.",
                       title="Invalid setting")
    return int(n)


def sampling_controls(defaults, max_new_tokens: int) -> tuple:
    """The sampling sliders every generating tab shows, at the model card's
    defaults: temperature, top-k, top-p, repetition penalty, max new tokens."""
    d = defaults
    return (gr.Slider(0.01, 2.0, d["temperature"], step=0.01, label="Temperature"),
            gr.Slider(0, 200, d["top_k"], step=1, label="Top-k (0 = off)"),
            gr.Slider(0.01, 1.0, d["top_p"], step=0.01, label="Top-p"),
            gr.Slider(1.0, 2.0, d["repetition_penalty"], step=0.05, label="Repetition penalty"),
            gr.Slider(1, max_new_tokens, d["max_new_tokens"], step=1, label="Max new tokens"))


def check_text(text, what: str = "text", allow_empty: bool = False) -> str:
    """Text from the UI or an API client: a string, not blank, not huge."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise gr.Error(f"The {what} must be text.")
    # Control characters other than newlines and tabs are dropped: they
    # carry nothing a model was trained on and break some tokenizers' offsets.
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
    if not allow_empty and not text.strip():
        raise gr.Error(f"Please type some {what} first.", title="Nothing to do")
    if len(text) > MAX_TEXT_CHARS:
        raise gr.Error(f"The {what} is {len(text):,} characters long; the limit is "
                       f"{MAX_TEXT_CHARS:,}.", title="Too long")
    return text


def error_message(exc: Exception) -> gr.Error:
    """Engine validation errors (bad settings) as a message, not a trace."""
    return gr.Error(str(exc), title="Invalid setting")


TASK_NAMES = {GENERATE: "text-generation model", CHAT: "chat model", CLASSIFY: "classifier",
              LABEL_SCORE: "classifier", SCORE: "scorer"}
OUT_OF_MEMORY = ("The model ran out of memory: try fewer tokens (a shorter text or fewer "
                 "new tokens) or a smaller model.")


def check_key(key, *tasks: str) -> ModelSpec:
    """A model key from the UI or an API client: in the registry and served
    by this tab (a classifier key sent to /generate is refused, not loaded)."""
    allowed = [s.key for s in by_task(*tasks)]
    if isinstance(key, str) and key in allowed:
        return REGISTRY[key]
    if isinstance(key, str) and key in REGISTRY:
        msg = f"{key!r} is not a {TASK_NAMES[tasks[0]]}."
    else:
        msg = f"Unknown model {key!r}."
    raise gr.Error(f"{msg} Choose one of: {', '.join(allowed)}.", title="Model unavailable")


def engine_errors(handler):
    """Wraps a tab's handler (plain or streaming): running out of memory
    (CUDA, MPS or CPU) frees what the request held and becomes a message in
    that tab, and the app keeps serving."""
    def explain(exc: BaseException):
        if not faults.is_out_of_memory(exc):
            raise exc
        faults.free_memory()
        raise gr.Error(OUT_OF_MEMORY, title="Out of memory") from None

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except (RuntimeError, MemoryError) as exc:
                explain(exc)
        return streaming

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except (RuntimeError, MemoryError) as exc:
            explain(exc)
    return plain
