"""Faults: a missing or corrupt model directory, a failing download, a
generation cancelled or abandoned mid-stream, and running out of memory.
Each gives a message in the right tab, frees what it held, and the app
keeps serving."""

import json
import shutil
import time
import uuid

import gradio as gr
import httpx
import pytest
import torch
from gradio_client.exceptions import AppError

from inference import decoder, faults, formats, generation, standins
from inference.sampling import Sampling
from inference.engine import Engine
from inference.errors import ModelUnavailable
from inference.settings import Settings
from ui import common

from conftest import STANDIN_DIR, free_port, wait_until, working, workers_stopped


GEN = ["A lhama", "ttl-160m", "main", 0.2, 20, 0.2, 1.2, 8]


def assert_still_serving(client):
    text, *_, figures, _, _ = client.predict(*GEN, api_name="/generate")
    assert isinstance(text, str) and "prompt tokens" in figures
    assert workers_stopped(5)


# -- model directories and downloads ----------------------------------------

def damaged_copy(tmp_path, how):
    src = standins.ensure("ttl-160m-imdb", root=STANDIN_DIR)
    dst = tmp_path / f"imdb-{how}"
    shutil.copytree(src, dst)
    if how == "truncated-weights":
        weights = dst / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "garbage-config":
        (dst / "config.json").write_text("{ this is not json")
    elif how == "wrong-config":
        (dst / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    elif how == "no-weights":
        (dst / "model.safetensors").unlink()
    return dst


DAMAGE = ["truncated-weights", "garbage-config", "wrong-config", "no-weights"]


@pytest.mark.parametrize("how", DAMAGE)
def test_corrupt_directory_falls_back_with_reason_and_fix(tmp_path, how):
    e = Engine(Settings(local_dirs={"ttl-160m-imdb": str(damaged_copy(tmp_path, how))},
                        standin_dir=str(STANDIN_DIR)))
    m = e.load("ttl-160m-imdb")
    assert m.is_standin
    assert "holds no loadable model" in m.notice and "Fix: Re-download" in m.notice


@pytest.mark.parametrize("how", DAMAGE)
def test_corrupt_directory_in_strict_mode_is_reported(tmp_path, how):
    e = Engine(Settings(strict=True, local_dirs={
        "ttl-160m-imdb": str(damaged_copy(tmp_path, how))}))
    with pytest.raises(ModelUnavailable, match="holds no loadable model.*Re-download"):
        e.load("ttl-160m-imdb")


def test_missing_directory_in_strict_mode_is_reported(tmp_path):
    e = Engine(Settings(strict=True, local_dirs={"ttl-160m-imdb": str(tmp_path / "gone")}))
    with pytest.raises(ModelUnavailable, match="does not exist.*save_pretrained"):
        e.load("ttl-160m-imdb")


@pytest.fixture(scope="module")
def faulty_app(tmp_path_factory):
    """A second app whose operator pointed one classifier at a corrupt
    directory and one at a missing one; a third directory is fine."""
    import app
    from gradio_client import Client
    tmp = tmp_path_factory.mktemp("faulty")
    good = standins.ensure("ttl-160m-hatebr", root=STANDIN_DIR)
    strict = Engine(Settings(strict=True, local_dirs={
        "ttl-160m-imdb": str(damaged_copy(tmp, "truncated-weights")),
        "ttl-160m-agnews": str(tmp / "gone"), "ttl-160m-hatebr": str(good)}))
    demo = app.build(strict)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                quiet=True, show_error=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


@pytest.mark.parametrize("key, match", [
    ("ttl-160m-imdb", "holds no loadable model.*Re-download"),
    ("ttl-160m-agnews", "does not exist.*save_pretrained")])
def test_strict_app_reports_a_broken_model_and_keeps_serving(faulty_app, key, match):
    with pytest.raises(AppError, match=match):
        faulty_app.predict("Que filme bom!", key, "Texto", api_name="/classify")
    result, banner = faulty_app.predict("Que comentário gentil", "ttl-160m-hatebr", "",
                                        api_name="/classify")
    assert result["label"] in ("NONTOXIC", "TOXIC")


@pytest.fixture
def failing_download(monkeypatch):
    """The hub answers, but every download fails half way."""
    from transformers import AutoTokenizer
    monkeypatch.delenv("HF_HUB_OFFLINE")
    original = AutoTokenizer.from_pretrained
    calls = []

    def from_pretrained(where, *args, **kwargs):
        calls.append(where)
        if where.startswith("nicholasKluge/"):
            raise OSError("Connection reset by peer while downloading tokenizer.json")
        return original(where, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)
    return calls


def test_failed_download_falls_back_and_says_why(failing_download):
    e = Engine(Settings(standin_dir=str(STANDIN_DIR)))
    e.fallback._hub_ok = (True, time.monotonic())   # the hub is up; no probe
    m = e.load("ttl-160m-imdb")
    assert failing_download[0] == "nicholasKluge/TeenyTinyLlama-160m-IMDB"
    assert m.is_standin and "Connection reset by peer" in m.notice
    assert "--local ttl-160m-imdb=DIR" in m.notice


def test_failed_download_in_strict_mode_is_a_message_in_the_tab(failing_download):
    from ui import classification as tab
    e = Engine(Settings(strict=True))
    e.fallback._hub_ok = (True, time.monotonic())
    with pytest.raises(gr.Error, match="could not be loaded: Connection reset by peer"):
        tab.classify(e, "Que filme bom!", "ttl-160m-imdb", "")
    assert not e.loaded()


# -- cancelled and abandoned streams ------------------------------------------

@pytest.fixture
def slow_ttl(ttl, monkeypatch):
    """TeenyTinyLlama's stand-in, slowed to ~20 tokens/s so that a stream is
    surely still running when it is cancelled."""
    forward = decoder.FORWARDS["llama"]

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return forward(*args, **kwargs)

    monkeypatch.setitem(decoder.FORWARDS, "llama", slow)
    return ttl


LONG = ["A lhama é um animal", "ttl-160m", "main", 1.0, 0, 1.0, 1.0, 1024, False, 3, 1]


def test_cancelled_stream_frees_its_worker_and_the_next_request_works(client, slow_ttl):
    job = client.submit(*LONG, api_name="/generate")
    assert wait_until(lambda: len(job.outputs()) >= 2, 30)
    assert working(), "the stream should still be running"
    job.cancel()
    assert workers_stopped(5)
    assert_still_serving(client)


def test_closed_page_mid_stream_frees_its_worker(client, app_url, slow_ttl):
    """What a browser does when its tab closes: the event stream's
    connection drops while tokens are still coming."""
    fn_index = next(d["id"] for d in client.config["dependencies"]
                    if d.get("api_name") == "generate")
    session = uuid.uuid4().hex
    with httpx.Client(base_url=app_url, timeout=30) as http:
        http.post("gradio_api/queue/join", json={
            "data": LONG, "fn_index": fn_index, "session_hash": session,
            "event_data": None, "trigger_id": None}).raise_for_status()
        with http.stream("GET", "gradio_api/queue/data",
                         params={"session_hash": session}) as events:
            generating = 0
            for line in events.iter_lines():
                generating += '"process_generating"' in line
                if generating >= 3:
                    break
            assert working(), "the stream should still be running"
    assert workers_stopped(5)
    assert_still_serving(client)


# -- out of memory -------------------------------------------------------------

def oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.fixture
def cuda_cache(monkeypatch):
    """Pretend to be on CUDA so the cache release can be seen."""
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    return emptied


def break_model(monkeypatch, m, attr):
    """Make `m` run out of memory: in its forward, or (attr "decode") in the
    batched decoder's forward for its architecture."""
    if attr == "decode":
        monkeypatch.setitem(decoder.FORWARDS, m.model.config.model_type, oom)
    else:
        monkeypatch.setattr(m.model, attr, oom)


@pytest.mark.parametrize("api_name, key, attr, args", [
    ("/generate", "ttl-160m", "decode", GEN),
    ("/chat", "aira-2-124m", "decode", ["Oi", None, 0.2, 30, 0.3, 1.2, 8]),
    ("/classify", "ttl-160m-imdb", "forward", ["Que filme bom!", "ttl-160m-imdb", ""]),
    ("/classify_batch", "ttl-160m-imdb", "forward", [None, "Que filme bom!\nRuim.",
                                                     "ttl-160m-imdb"]),
    ("/perplexity", "ttl-160m", "forward", ["A lhama é um animal.", "ttl-160m", "main"]),
])
def test_out_of_memory_is_a_message_in_that_tab_and_frees_memory(
        client, engine, monkeypatch, cuda_cache, api_name, key, attr, args):
    m = engine.load(key)
    break_model(monkeypatch, m, attr)
    with pytest.raises(AppError, match="ran out of memory: try fewer tokens .* or a smaller model"):
        client.predict(*args, api_name=api_name)
    assert cuda_cache, "torch.cuda.empty_cache was not called"
    assert workers_stopped()
    monkeypatch.undo()
    client.predict(*args, api_name=api_name)   # the same tab works again
    assert_still_serving(client)


def test_out_of_memory_in_the_tweet_models_free_answer_is_a_message(request, engine,
                                                                     monkeypatch):
    from ui import classification as tab
    m = engine.load("tinyllama-tweet")   # loaded before CUDA is pretended
    cuda_cache = request.getfixturevalue("cuda_cache")
    break_model(monkeypatch, m, "decode")
    with pytest.raises(gr.Error, match="ran out of memory"):
        tab.free_answer(engine, "Just got my dream job!", "tinyllama-tweet")
    assert cuda_cache and workers_stopped()
    monkeypatch.undo()
    assert tab.free_answer(engine, "Just got my dream job!", "tinyllama-tweet").visible


def test_out_of_memory_in_the_worker_reaches_the_caller_and_releases_the_model(
        ttl, monkeypatch):
    break_model(monkeypatch, ttl, "decode")
    ids = formats.encode("plain", ttl.tokenizer, {"text": "A lhama"})
    with pytest.raises(torch.OutOfMemoryError):
        list(generation.stream(ttl, ids, Sampling(max_new_tokens=4)))
    assert workers_stopped()


@pytest.mark.parametrize("exc, is_oom", [
    (torch.OutOfMemoryError("CUDA out of memory"), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
    (MemoryError(), True),
    (RuntimeError("shape mismatch"), False), (ValueError("out of memory"), False)])
def test_out_of_memory_is_recognised_on_every_device(exc, is_oom):
    assert faults.is_out_of_memory(exc) is is_oom


def test_other_errors_pass_through_the_tab_wrapper_unchanged():
    @common.engine_errors
    def handler():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        handler()
