"""The vllm backend's own behaviour where no vLLM is needed: a server on
loopback that answers the app's checks and then does what a busy or odd
server does (tests/test_vllm.py runs the real thing)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import engine_for_tests, wait_until
from inference import api
from inference.errors import ModelUnavailable, ServerError
from inference.standins import build_tokenizer

TOKENIZER = build_tokenizer("ttl")


class Stalling(BaseHTTPRequestHandler):
    """/v1/models, /version and /tokenize as vLLM answers them; completions
    get their headers and then nothing (a request waiting in a queue),
    until the client hangs up."""
    version = "0.32.0"
    hung_up: list = []

    def log_message(self, *args):
        pass

    def reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self.reply({"data": [{"id": "ttl-160m"}]})
        else:
            self.reply({"version": self.version})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            self.reply({"tokens": TOKENIZER.encode(body["prompt"], add_special_tokens=False)})
            return
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self.connection.settimeout(30)
            try:
                self.connection.recv(1)   # returns when the client hangs up
            except OSError:
                pass
            self.hung_up.append(time.monotonic())
        else:
            self.reply({"choices": [{"index": 0, "unexpected": True}]})


@pytest.fixture
def server():
    Stalling.hung_up = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


def engine_on(httpd):
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    return engine_for_tests(backends={"ttl-160m": "vllm"}, remotes={"ttl-160m": (url,)})


def test_a_cancel_hangs_up_even_before_the_first_token(server):
    e = engine_on(server)
    cancel = threading.Event()
    events = api.generate(e, "ttl-160m", "A lhama é", cancel=cancel)
    assert next(events).label == "vllm backend · stand-in"
    done = threading.Event()
    threading.Thread(target=lambda: (list(events), done.set()), daemon=True).start()
    assert not done.wait(0.5)   # the server sends nothing: the reader waits
    cancel.set()
    assert done.wait(2.0)       # and stops at once when cancelled
    assert wait_until(lambda: Stalling.hung_up, 2.0)   # the server saw the hang-up
    pool = e.backends["vllm"].pools["ttl-160m"]
    assert pool.status() == (1, 1) and pool.replicas[0].in_flight == 0   # not its fault


def test_a_reply_of_another_shape_is_a_clear_error(server):
    e = engine_on(server)
    with pytest.raises(ServerError, match="sent a reply the app does not understand"):
        api.perplexity(e, "ttl-160m", "A lhama é um animal.")


def test_an_old_vllm_is_refused_with_the_version_it_needs(server, monkeypatch):
    monkeypatch.setattr(Stalling, "version", "0.10.1")
    with pytest.raises(ModelUnavailable, match=r"runs vLLM 0\.10\.1.*needs vLLM 0\.32 or later"):
        list(api.generate(engine_on(server), "ttl-160m", "A lhama é"))

