"""The engine's seam: the same request through the local decoder and
through transformers' own `generate` gives the same tokens and
probabilities; every tab's handler works over any backend (here a scripted
one); the page's code reaches the engine only through the request API."""

from __future__ import annotations

import ast
import math
import re
import threading
import time
from pathlib import Path

import pytest
import torch

from inference import formats, generation
from inference.backends import Backend
from inference.sampling import Drawn, Sampling, Scored
from ui import benchmarks, chat, classification, generation as generation_tab

from conftest import engine_for_tests


@pytest.fixture(scope="module")
def fp32():
    """The stand-ins in fp32, computed by each backend."""
    return {name: engine_for_tests(fast="off", backend=name) for name in ("local", "transformers")}


@pytest.mark.parametrize("key, text", [("ttl-160m", "A lhama é um animal"),
                                       ("aira-2-124m", "O que é uma lhama?"),
                                       ("tinyllama-tweet", "Que dia lindo!")])
def test_local_and_transformers_give_the_same_greedy_tokens_and_probabilities(fp32, key, text):
    s = Sampling(do_sample=False, repetition_penalty=1.2, max_new_tokens=24)
    out = {}
    for name, engine in fp32.items():
        m = engine.load(key)
        assert m.backend.name == name
        ids = formats.encode(m.spec.prompt_format, m.tokenizer,
                             {"system": m.spec.system_prompt, "text": text})
        out[name] = list(generation.stream_tokens(m, ids, s))[-1][2]
    local, reference = out["local"], out["transformers"]
    assert [d.id for d in local] == [d.id for d in reference] and len(local) > 0
    for a, b in zip(local, reference):
        assert a.prob == pytest.approx(b.prob, abs=1e-4)
        assert [i for i, _ in a.top] == [i for i, _ in b.top]


def test_transformers_backend_samples_reproducibly_and_stops_on_cancel(fp32):
    m = fp32["transformers"].load("ttl-160m")
    ids = formats.encode("plain", m.tokenizer, {"text": "A lhama"})
    s = Sampling(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=30, seed=5)
    first = list(generation.stream_tokens(m, ids, s))[-1][1]
    assert list(generation.stream_tokens(m, ids, s))[-1][1] == first
    cancel = threading.Event()
    tokens = m.backend.stream(m, ids, Sampling(max_new_tokens=1000, seed=1), cancel)
    next(tokens)
    cancel.set()
    assert len(list(tokens)) < 1000
    drawn = list(generation.stream_tokens(m, ids, s))[-1][2]
    assert all(d.prob > 0 for d in drawn)   # the distribution each was drawn from


class Scripted(Backend):
    """A backend that computes nothing: it answers "olá mundo" to every
    prompt, gives every token probability 1/2 and prefers the last label."""
    name = "scripted"

    def stream(self, m, ids, s, cancel):
        time.sleep(0.05)   # a first token that takes a while
        words = m.tokenizer("olá mundo", add_special_tokens=False)["input_ids"]
        for t in words + [m.tokenizer.eos_token_id]:
            if cancel.is_set():
                return
            yield Drawn(t, 0.5, ((t, 0.5),))

    def prompt_logprobs(self, m, rows, top):
        return [[Scored(t, math.log(0.5), ((t, math.log(0.5)),)) for t in row[1:]] for row in rows]

    def classify(self, m, rows):
        labels = max(len(m.spec.labels), 1)
        return torch.arange(labels, dtype=torch.float32).repeat(len(rows), 1)


@pytest.fixture(scope="module")
def scripted():
    e = engine_for_tests()
    e.backends = {name: Scripted(e.settings) for name in e.backends}
    return e


def last(gen):
    out = None
    for out in gen:
        pass
    return out


def test_every_tab_runs_over_any_backend(scripted):
    texts = last(generation_tab.generate(scripted, "Oi", seed=1, progress=None))
    assert texts[0].strip() == "olá mundo" and "new tokens" in texts[4]
    assert float(re.search(r"first token after \*\*([\d.]+) s", texts[4]).group(1)) >= 0.05
    spans, table = generation_tab.explain(scripted, texts[6])
    assert len(spans) == len(table) > 0 and [row[2] for row in table] == [0.5] * len(table)
    summary, _ = generation_tab.perplexity(scripted, "Uma frase qualquer.", progress=None)
    assert "Perplexity **2.00**" in summary
    shown, _, _ = last(chat.respond(scripted, "Oi?", progress=None))
    assert shown[-1]["content"] == "olá mundo"
    probs, _ = classification.classify(scripted, "Que filme!", "ttl-160m-imdb", progress=None)
    assert max(probs, key=probs.get) == "POSITIVE"
    summary, speeds, surprisal = benchmarks.measure_here(scripted, "Uma frase.", "ttl-160m",
                                                         progress=lambda *a, **k: None)
    assert "perplexity **2.00**" in summary and set(surprisal["surprisal (bits)"]) == {"1.00"}


def test_the_page_reaches_the_engine_only_through_the_request_api():
    allowed = {"inference.api", "inference.registry", "inference.errors"}
    for path in Path(__file__).resolve().parent.parent.joinpath("ui").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("inference"):
                names = {node.module} if node.module != "inference" else \
                    {f"inference.{a.name}" for a in node.names}
                assert names <= allowed, (path.name, names)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("inference") for a in node.names), path.name


def test_backend_is_chosen_per_model():
    from inference.settings import Settings
    s = Settings.from_env({"TTL_BACKEND": "local,ttl-460m=transformers"})
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert s.backend_for("ttl-160m", cpu) == "local" and s.backend_for("ttl-460m", cpu) == "transformers"
    auto = Settings()
    assert auto.backend_for("ttl-160m", cpu) == "local" and auto.backend_for("ttl-160m", gpu) == "transformers"
    assert Settings.from_env({"TTL_BACKEND": "llamacpp"}).backend_for("ttl-160m", cpu) == "llamacpp"
    with pytest.raises(ValueError, match="backend must be one of"):
        Settings.from_env({"TTL_BACKEND": "llama.cpp"})


def test_auto_gives_cpu_decoders_to_llama_cpp_only_where_it_is_installed_and_faster(
        monkeypatch, local_road_for_auto):
    """Faster: on a CPU without VNNI (docs/performance.md)."""
    from inference import fastpath, llamacpp
    from inference.settings import Settings
    preferred = local_road_for_auto   # the rule, not the suite's pin
    for installed, vnni, want in ((True, False, True), (True, True, False), (False, False, False)):
        monkeypatch.setattr(llamacpp, "available", lambda: installed)
        monkeypatch.setattr(fastpath, "has_vnni", lambda: vnni)
        assert preferred() is want, (installed, vnni)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for pick in (True, False):
        monkeypatch.setattr(llamacpp, "preferred", lambda: pick)
        assert Settings().backend_for("ttl-160m", cpu) == ("llamacpp" if pick else "local")
        assert Settings().backend_for("ttl-160m", gpu) == "transformers"
        assert Settings(backend="local").backend_for("ttl-160m", cpu) == "local"
        assert Settings(fast="off").backend_for("ttl-160m", cpu) == "local"   # fp32 asked for


def test_a_models_servers_are_named_with_their_urls():
    from inference.settings import Settings
    s = Settings.from_env({"TTL_BACKEND": "ttl-160m=vllm:http://h1:8000|http://h2:8000/,"
                                          "ttl-160m-imdb=vllm:https://pool.example"})
    assert s.backend_for("ttl-160m", torch.device("cpu")) == "vllm"
    assert s.remotes == {"ttl-160m": ("http://h1:8000", "http://h2:8000/"),
                         "ttl-160m-imdb": ("https://pool.example",)}
    assert s.backend_for("ttl-460m", torch.device("cpu")) == "local"
    for wrong, message in [("vllm", "A server serves one model"),
                           ("vllm:http://h:8000", "A server serves one model"),
                           ("ttl-160m=vllm", "needs its servers' URLs"),
                           ("ttl-160m=vllm:", "needs its servers' URLs"),
                           ("ttl-160m=vllm:h1:8000", "is not an http"),
                           ("ttl-160m=vllm:http://h1:port", "is not an http"),
                           ("reward-pt=vllm:http://h:8000", "computes locally")]:
        with pytest.raises(ValueError, match=message):
            Settings.from_env({"TTL_BACKEND": wrong})
    with pytest.raises(KeyError, match="Unknown model"):
        Settings.from_env({"TTL_BACKEND": "no-such=local"})
