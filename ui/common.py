"""What every tab shares: progress and banners, the sampling sliders, and
turning the engine's refusals into messages people can act on."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr

from inference import api
from inference.errors import EngineError

log = logging.getLogger("ttl.refused")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
MAX_TEXT_CHARS = api.MAX_TEXT_CHARS


# What a ZeroGPU call asks for: the GPU is held (and the visitor's quota
# checked) for at most this long, so a request asks for what it needs: a
# base for the first forward passes, and its new tokens at a generous rate
# for a model of this size on a shared GPU. A batch asks for its time limit.
GPU_BASE_S, GPU_S_PER_TOKEN, GPU_MAX_S = 15, 0.05, 120


def gpu_seconds(handler):
    """The duration `spaces.GPU` asks for, from the call's own arguments
    (ZeroGPU passes the handler's arguments to it)."""
    signature = inspect.signature(handler)

    def duration(*args, **kwargs) -> int:
        try:
            given = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return GPU_MAX_S
        if "file" in given:   # a batch
            return min(GPU_MAX_S, api.MAX_BATCH_SECONDS)
        tokens = _number(given.get("max_new_tokens"), 0)
        count = _number(given.get("completions", given.get("n")), 1)
        return int(min(GPU_MAX_S, GPU_BASE_S + GPU_S_PER_TOKEN * tokens * count))
    return duration


def _number(value, default: float) -> float:
    """A slider's or a client's value as a number (the handler itself
    refuses one that is not)."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return default


def on_gpu(engine: api.Engine, handler):
    """`handler` as it is, or, on a ZeroGPU Space (the engine in ZeroGPU mode
    and the `spaces` package present), under `spaces.GPU`, which holds a GPU
    for each call, as long as `gpu_seconds` says the call needs."""
    if engine.settings.zero_gpu and importlib.util.find_spec("spaces"):
        import spaces
        return spaces.GPU(duration=gpu_seconds(handler))(handler)
    return handler


def bind(fn, engine: api.Engine):
    """A tab's handler with the engine bound (see `on_gpu`). It keeps the
    handler's name and docstring: they name and describe its MCP tool."""
    bound = functools.partial(fn, engine)
    bound.__name__, bound.__doc__ = fn.__name__, fn.__doc__
    return on_gpu(engine, bound)


def status(progress: gr.Progress | None):
    """A request's status messages ("Downloading…", "Preparing the
    stand-in…") shown on the tab's progress bar."""
    def show(msg: str) -> None:
        if progress is not None:
            progress(None, desc=msg)
    return show


def notice(text: str | None) -> gr.Markdown:
    """The tab's banner: shown when the tab serves a stand-in (see `compact`)."""
    return gr.Markdown(compact(text) if text else "", visible=bool(text))


def compact(text: str) -> str:
    """A banner in as few lines as a phone allows: each paragraph that opens
    with a bold sentence shows only that sentence, and the rest on a click."""
    shown = []
    for para in text.split("\n\n"):
        lead = re.fullmatch(r"\*\*(.+?)\*\*\s*(.+)", para, re.S)
        # Markdown inside an HTML block needs blank lines around it.
        shown.append(f"<details><summary><strong>{lead[1]}</strong></summary>\n\n{lead[2]}\n\n"
                     "</details>" if lead else para)
    return "\n\n".join(shown)


def sampling_controls(defaults, max_new_tokens: int) -> tuple:
    """The sampling sliders every generating tab shows, at the model card's
    defaults: temperature, top-k, top-p, repetition penalty, max new tokens."""
    d = defaults
    return (gr.Slider(0.01, 2.0, d["temperature"], step=0.01, label="Temperature"),
            gr.Slider(0, 200, d["top_k"], step=1, precision=0, label="Top-k (0 = off)"),
            gr.Slider(0.01, 1.0, d["top_p"], step=0.01, label="Top-p"),
            gr.Slider(1.0, 2.0, d["repetition_penalty"], step=0.05, label="Repetition penalty"),
            gr.Slider(1, max_new_tokens, d["max_new_tokens"], step=1, precision=0,
                      label="Max new tokens"))


# Files made for visitors (results CSVs) live this long; Gradio's own cache
# (uploads, and the copies it serves) is emptied on the same clock (app.py).
FILES_KEPT_S = 3600
RESULTS = Path(tempfile.gettempdir()) / "ttl-playground-results"


def result_file(name: str) -> Path:
    """A fresh path for a file made for a visitor, in a folder of its own;
    the folders older than FILES_KEPT_S are deleted first."""
    RESULTS.mkdir(exist_ok=True)
    for old in RESULTS.iterdir():
        if time.time() - old.stat().st_mtime > FILES_KEPT_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = RESULTS / uuid.uuid4().hex
    folder.mkdir()
    return folder / name


def refused(message: str, title: str = "Error") -> gr.Error:
    """A request refused with a message for the person who sent it. It is
    logged as one line: a refusal is not a fault, and Gradio would print a
    traceback for each one."""
    log.info("%s: %s", title, message)
    return gr.Error(message, title=title, print_exception=False)


def quiet_refusals(demo: gr.Blocks) -> None:
    """A value a component refuses before any handler runs (a slider out of
    range, a choice not offered) is logged as one line too: Gradio would
    print a traceback for each."""
    def quiet(preprocess):
        @functools.wraps(preprocess)
        def checked(*args, **kwargs):
            try:
                return preprocess(*args, **kwargs)
            except gr.Error as exc:
                raise refused(exc.message, exc.title) from None
        return checked
    for block in demo.blocks.values():
        if callable(getattr(block, "preprocess", None)):
            block.preprocess = quiet(block.preprocess)


def engine_errors(handler):
    """Wraps a tab's handler (plain or streaming): a request the engine
    refuses (`EngineError`: a bad setting, a text too long, a model that
    cannot be had, running out of memory) becomes a message in that tab."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except EngineError as exc:
                raise refused(str(exc), exc.title) from None
        return streaming

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except EngineError as exc:
            raise refused(str(exc), exc.title) from None
    return plain
