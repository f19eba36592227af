"""The engine's one error type. Every request the engine refuses (a bad
setting, a text too long, an unknown model, a model that cannot be had)
raises an `EngineError` whose message is meant for people as it is; front
ends show it (the page as a `gr.Error`, an API as an error object) and
never a traceback."""

from __future__ import annotations


class EngineError(ValueError):
    """A refused request; `title` heads the message."""
    title = "Invalid request"

    def __init__(self, message: str, title: str | None = None):
        super().__init__(message)
        if title:
            self.title = title


class ModelUnavailable(EngineError):
    """A model could not be loaded; the message says what failed and how to
    fix it."""
    title = "Model unavailable"

    def __init__(self, reason: str, fix: str = ""):
        super().__init__(f"{reason} {fix}".strip())
        self.reason, self.fix = reason, fix


class ServerError(EngineError):
    """A server that computes a model (remote.py) failed or timed out; the
    request itself was fine."""
    title = "Server error"


class OutOfMemory(EngineError):
    title = "Out of memory"

    def __init__(self):
        super().__init__("The model ran out of memory: try fewer tokens (a shorter text or "
                         "fewer new tokens) or a smaller model.")
