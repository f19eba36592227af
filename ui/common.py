"""What every tab shares: loading a model with progress and a banner, and
turning engine errors into messages people can act on."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import gradio as gr

from inference.loading import Engine, Loaded, ModelUnavailable

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MAX_TEXT_CHARS = 20_000   # ~5k tokens: more than any served context holds


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
