"""What abuse through the API gets: bodies over the limit refused before
Gradio reads them, the page's own events not callable by name, a batch
that stops when cancelled or out of time, a refusal logged as one line,
files made for visitors deleted after an hour, and the state of at most a
thousand sessions kept."""

from __future__ import annotations

import logging
import os
import time

import httpx
import pytest

from conftest import free_port, wait_until
from inference import api, classification
from server.limits import MAX_REQUEST_BYTES
from ui import classification as ui_classification
from ui import common


@pytest.fixture(scope="module")
def http(app_url):
    with httpx.Client(base_url=app_url, timeout=30) as c:
        yield c


def test_a_body_over_the_limit_is_refused_before_it_is_read(http):
    history = [{"role": "user", "content": "x" * 1000}] * (MAX_REQUEST_BYTES // 900)
    for path in ("gradio_api/call/chat", "gradio_api/queue/join", "v1/chat/completions"):
        r = http.post(path, json={"data": ["Oi", history], "messages": history})
        assert r.status_code == 413, path
        assert "over 2,000,000 bytes" in r.json()["detail"]


def test_a_chunked_body_over_the_limit_is_cut_off(http):
    def chunks():
        for _ in range(MAX_REQUEST_BYTES // 100_000 + 5):
            yield b" " * 100_000
    r = http.post("gradio_api/call/classify", content=chunks(),
                  headers={"content-type": "application/json"})
    assert r.status_code >= 400


def test_the_pages_own_events_are_not_callable_by_name(http):
    assert http.post("gradio_api/call/relabel", json={"data": ["ttl-160m-imdb"]}).status_code == 404
    r = http.post("gradio_api/call/classify", json={"data": ["Bom filme", "ttl-160m-imdb", ""]})
    assert r.status_code == 200 and "event_id" in r.json()
    result = http.get(f"gradio_api/call/classify/{r.json()['event_id']}").text
    assert "event: complete" in result


def test_a_cancelled_batch_stops_between_chunks(client, slow_chunks):
    chunks = slow_chunks
    lines = "\n".join(f"Um filme número {i}, bom ou ruim." for i in range(1000))
    job = client.submit(None, lines, "ttl-160m-imdb", api_name="/classify_batch")
    assert wait_until(lambda: len(chunks) >= 3, 30)
    job.cancel()
    time.sleep(ui_classification.ABANDONED_S + 1.0)   # the chunk running then may finish
    after = len(chunks)
    time.sleep(1.0)
    assert len(chunks) == after < 1000 // classification.BATCH_CHUNK


def test_a_batch_past_its_time_limit_reports_the_rows_left(engine, monkeypatch):
    monkeypatch.setattr(api, "MAX_BATCH_SECONDS", 0)
    rows = [{"text": f"Filme {i}"} for i in range(40)]
    batch = api.classify_batch(engine, "ttl-160m-imdb", rows)
    assert batch.results == ["not classified: the batch's time limit (0 s) was reached"] * 40


def test_a_refusal_is_logged_as_one_line(client, caplog, capfd):
    with caplog.at_level(logging.INFO, logger="ttl.refused"):
        with pytest.raises(Exception, match="Please type some text first"):
            client.predict("", "ttl-160m-imdb", "", api_name="/classify")
        with pytest.raises(Exception, match="greater than maximum value 2.0"):   # the slider's own
            client.predict("A lhama", "ttl-160m", "main", 99, 20, 0.2, 1.2, 32, False, None,
                           api_name="/generate")
    assert sum(r.name == "ttl.refused" for r in caplog.records) == 2
    assert "Traceback" not in capfd.readouterr().err


def test_files_made_for_visitors_are_deleted_after_an_hour():
    old = common.result_file("old.csv")
    old.write_text("x")
    hour_ago = time.time() - common.FILES_KEPT_S - 60
    os.utime(old.parent, (hour_ago, hour_ago))
    new = common.result_file("new.csv")
    assert not old.parent.exists() and new.parent.exists()


def test_the_state_of_at_most_a_thousand_sessions_is_kept(engine):
    import app
    demo = app.build(engine)
    app.launch(demo, engine, server_name="127.0.0.1", server_port=free_port(),
               prevent_thread_lock=True, quiet=True)
    try:
        # The running server's store of sessions, which lets the oldest go
        # past its capacity (Gradio's StateHolder.update).
        assert demo.server_app.state_holder.capacity == app.SESSIONS_KEPT == 1000
    finally:
        demo.close()
