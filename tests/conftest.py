"""Fixtures: stand-in models (built once per machine, cached), an engine
serving them, and the app running on a free local port."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

# Tests never touch the network: the hub is off, stand-ins are on.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# What the app keeps (votes, fine-tuned models) goes to a folder of this run's.
os.environ["TTL_DATA_DIR"] = tempfile.mkdtemp(prefix="ttl-data-")
os.environ["TTL_BACKEND"] = "local"   # see local_road_for_auto
STANDIN_DIR = Path(os.environ.setdefault(
    "TTL_STANDIN_DIR", str(Path.home() / ".cache" / "ttl-playground" / "test-standins")))

from inference.engine import Engine  # noqa: E402
from inference.settings import Settings  # noqa: E402


def pytest_sessionstart(session):
    """Every stand-in built before the first test (seconds, once per
    machine), so that no test, and no browser test's timeout, waits on one."""
    from transformers.utils import logging as hf_logging

    from inference import standins
    from inference.registry import REGISTRY
    hf_logging.disable_progress_bar()   # a bar per saved model would fill the log
    try:
        for key in REGISTRY:
            standins.ensure(key, root=STANDIN_DIR)
    finally:
        hf_logging.enable_progress_bar()


@pytest.fixture(autouse=True, scope="session")
def local_road_for_auto():
    """`auto` gives a CPU's Llama decoders to llama.cpp where its extra is
    installed and the CPU has no VNNI (llamacpp.preferred). The suite tests
    the local road unless a test names another backend, so that what it
    covers does not depend on the CPU of the machine it runs on (the apps
    the tests start in a process of their own: TTL_BACKEND, above)."""
    from inference import llamacpp
    real = llamacpp.preferred
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llamacpp, "preferred", lambda: False)
        yield real   # for the test of the rule itself


# The compute threads (inference/worker.py) of the engines the tests made.
WORKERS = []


def engine_for_tests(**settings) -> Engine:
    e = Engine(Settings(standin=True, standin_dir=str(STANDIN_DIR), **settings))
    WORKERS.append(e.worker)
    return e


@pytest.fixture(scope="session")
def engine() -> Engine:
    return engine_for_tests()


@pytest.fixture
def slow_chunks(monkeypatch) -> list[float]:
    """Batches classified at ~0.2 s a chunk, so that one is surely still
    running when a test stops it; the list gets each chunk's start time."""
    from inference import classification
    chunks, real = [], classification.classify_chunk

    def slow(m, rows):
        chunks.append(time.monotonic())
        time.sleep(0.2)
        return real(m, rows)
    monkeypatch.setattr(classification, "classify_chunk", slow)
    return chunks


@pytest.fixture(scope="session")
def ttl(engine):
    return engine.load("ttl-160m")


@pytest.fixture(scope="session")
def aira(engine):
    return engine.load("aira-2-124m")


def wait_until(condition, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def working() -> bool:
    """Some engine is computing: a request in a batch, a forward pass waiting."""
    return not all(w.idle for w in WORKERS)


def workers_stopped(seconds=1.0) -> bool:
    """Every engine's compute thread has stopped working (a cancelled
    request is out of its batch) within `seconds`."""
    return wait_until(lambda: not working(), seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(engine):
    """The whole app on stand-ins, served in this process."""
    import app
    demo = app.build(engine)
    port = free_port()
    app.launch(demo, engine, server_name="127.0.0.1", server_port=port,
               prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client
    return Client(app_url, verbose=False)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (no browser download)."""
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("browser tests need /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    """A fresh page on the app; fails the test on any page or console error."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
    pg.goto(app_url)
    pg.wait_for_selector("button:has-text('Generate')", timeout=30_000)
    yield pg
    ctx.close()
    assert not errors, "\n".join(errors)
