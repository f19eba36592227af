"""The vllm backend against real vLLM servers (scripts/vllm_check.sh starts
them): generation, chat, classification, perplexity and "Why this token?"
computed by vLLM agree with the app's own fp32 compute; a cancel ends the
server's work; a replica lost mid-answer (the answer goes on elsewhere) and
coming back; servers all down are an error, never a stand-in."""

from __future__ import annotations

import os
import re
import threading
import time
from urllib.request import urlopen

import pytest
import torch

from conftest import STANDIN_DIR, engine_for_tests, free_port, wait_until
from inference import api, remote
from inference.errors import ModelUnavailable
from inference.sampling import candidates, penalised
from vllm_servers import Server

pytestmark = pytest.mark.vllm
PYTHON = os.environ.get("TTL_VLLM_PYTHON")
PROMPT = "A PUCRS é uma universidade"


@pytest.fixture(scope="module")
def servers():
    if not PYTHON:
        pytest.skip("no vLLM here: scripts/vllm_check.sh installs it and runs these tests")
    ours = {"a": Server("ttl-160m", STANDIN_DIR / "ttl-160m", free_port()),
            "b": Server("ttl-160m", STANDIN_DIR / "ttl-160m", free_port()),
            "imdb": Server("ttl-160m-imdb", STANDIN_DIR / "ttl-160m-imdb", free_port(), pooling=True),
            "aira": Server("aira-2-124m", STANDIN_DIR / "aira-2-124m", free_port())}
    try:
        for s in ours.values():
            s.start(PYTHON)
        for s in ours.values():
            s.wait()
        yield ours
    finally:
        for s in ours.values():
            s.stop()


@pytest.fixture(scope="module")
def far(servers):
    """The app's engine with the models computed by the servers."""
    remotes = {"ttl-160m": (servers["a"].url, servers["b"].url),
               "ttl-160m-imdb": (servers["imdb"].url,), "aira-2-124m": (servers["aira"].url,)}
    return engine_for_tests(backends={k: "vllm" for k in remotes}, remotes=remotes)


@pytest.fixture(scope="module")
def near():
    """The same models computed here in fp32, as the servers do."""
    return engine_for_tests(fast="off")


def last(events):
    return list(events)[-1]


def test_greedy_generation_is_the_local_text_with_the_same_probabilities(far, near):
    args = dict(do_sample=False, max_new_tokens=40)
    started, *_ = api.generate(far, "ttl-160m", PROMPT, **args)
    assert started.label == "vllm backend · stand-in"
    got, want = last(api.generate(far, "ttl-160m", PROMPT, **args)), \
        last(api.generate(near, "ttl-160m", PROMPT, **args))
    assert got.ids == want.ids and len(got.ids) > 5
    for a, b in zip(got.drawn, want.drawn):
        assert a.prob == pytest.approx(b.prob, abs=1e-4)
        assert [i for i, _ in a.top] == [i for i, _ in b.top]


def test_sampled_tokens_show_the_distribution_they_were_drawn_from_and_seeds_repeat(far, near):
    args = dict(temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=30, seed=5)
    started, *_, piece = api.generate(far, "ttl-160m", PROMPT, **args)
    assert last(api.generate(far, "ttl-160m", PROMPT, **args)).ids == piece.ids
    m = near.load("ttl-160m")
    ids = started.prompt + piece.ids
    with torch.inference_mode():
        logits = m.model(torch.tensor([ids])).logits[0].float()
    s = started.samplings[0]
    for i, d in enumerate(piece.drawn):   # fp32's distribution, processed as the app does
        row = penalised(logits[len(started.prompt) - 1 + i],
                        torch.tensor(ids[:len(started.prompt) + i]), s.repetition_penalty)
        cand, probs = candidates(row, s)
        assert d.prob == pytest.approx(float(probs[cand == d.id].sum()), abs=1e-4)
    shown = started.explain(started.prompt, piece.drawn)
    assert all(t.prob > 0 for t in shown) and "".join(t.text for t in shown).strip()


def test_perplexity_comes_from_prompt_logprobs(far, near):
    text = "A lhama é um animal da América do Sul, parente do camelo."
    got, want = api.perplexity(far, "ttl-160m", text), api.perplexity(near, "ttl-160m", text)
    assert got.perplexity.value == pytest.approx(want.perplexity.value, rel=1e-4)
    for a, b in zip(got.perplexity.tokens, want.perplexity.tokens):
        assert (a.id, a.text) == (b.id, b.text) and a.prob == pytest.approx(b.prob, abs=1e-5)
        assert [t for t, _ in a.alternatives] == [t for t, _ in b.alternatives]


def test_a_text_longer_than_the_context_is_scored_on_what_the_server_takes(far, near):
    text = " ".join(["A lhama é um animal da América do Sul."] * 300)   # ~3,300 tokens
    got = api.perplexity(far, "ttl-160m", text).perplexity
    want = api.perplexity(near, "ttl-160m", text).perplexity
    assert got.dropped > 0 and len(got.tokens) == len(want.tokens) - 1   # one left for vLLM
    for a, b in zip(got.tokens, want.tokens):
        assert a.id == b.id and a.prob == pytest.approx(b.prob, abs=1e-4)


def test_chat_with_aira_is_the_local_answer(far, near):
    messages = [{"role": "user", "content": "O que é uma lhama?"}]
    args = dict(do_sample=False, max_new_tokens=40)
    got, want = last(api.chat(far, "aira-2-124m", messages, **args)), \
        last(api.chat(near, "aira-2-124m", messages, **args))
    assert got.text == want.text


def test_classification_through_vllms_classify(far, near):
    text = {"text": "Um filme lindo, com atores ótimos."}
    got, want = api.classify(far, "ttl-160m-imdb", text), api.classify(near, "ttl-160m-imdb", text)
    assert got.probs.keys() == want.probs.keys()
    for label in want.probs:
        assert got.probs[label] == pytest.approx(want.probs[label], abs=1e-4)
    rows = [{"text": "Péssimo."}, {"text": ""}, {"text": "Ótimo filme!"}]
    batch = api.classify_batch(far, "ttl-160m-imdb", rows)
    assert batch.results[1] == "empty text" and set(batch.results[2]) == set(want.probs)


def metric(server: Server, name: str) -> float:
    """A counter of the server's /metrics, summed over its labels."""
    with urlopen(f"{server.url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(rf"^vllm:{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def test_a_cancel_ends_the_servers_work(far, near, servers):
    args = dict(max_new_tokens=1024, do_sample=False, repetition_penalty=1.0)
    full = len(last(api.generate(near, "ttl-160m", PROMPT, **args)).ids)
    assert full > 500
    made = lambda: sum(metric(servers[k], "generation_tokens_total") for k in "ab")  # noqa: E731
    before = made()
    cancel = threading.Event()
    events = api.generate(far, "ttl-160m", PROMPT, cancel=cancel, **args)
    next(events), next(events)   # started, and the first piece: the server is generating
    cancel.set()
    list(events)
    time.sleep(3)   # the counters catch up; a request still running would keep adding
    settled = made() - before
    time.sleep(2)
    # Stopped, and well short of the whole answer: a tiny stand-in on a busy
    # machine can still draw a few hundred tokens before the abort lands.
    assert made() - before == settled and 0 < settled < 0.9 * full


def serving(far, servers) -> Server:
    """The replica with a request in flight now (the app's own count)."""
    pool = far.backends["vllm"].pools["ttl-160m"]
    busy = [r.url for r in pool.replicas if r.in_flight]
    assert len(busy) == 1
    return next(s for s in (servers["a"], servers["b"]) if s.url == busy[0])


def test_a_replica_lost_mid_answer_and_coming_back(far, near, servers):
    m = far.load("ttl-160m")
    args = dict(max_new_tokens=1024, do_sample=False, repetition_penalty=1.0)
    want = last(api.generate(near, "ttl-160m", PROMPT, **args)).ids
    events = api.generate(far, "ttl-160m", PROMPT, **args)
    next(events), next(events)   # started, and the first piece
    lost = serving(far, servers)
    # Killed while answering. The tiny stand-in may have sent its whole
    # answer already (it waits in the socket until the app reads it);
    # otherwise the answer goes on at the other replica. Either way it is
    # whole and unchanged.
    lost.stop()
    assert last(events).ids == want
    assert wait_until(lambda: "1 of 2 servers of TeenyTinyLlama-160m is not answering"
                      in (m.banner or ""), remote.HEALTH_EVERY_S + 5)

    lost.start(PYTHON).wait()   # a new process: its counters start at 0
    pool = far.backends["vllm"].pools["ttl-160m"]
    assert wait_until(lambda: pool.status() == (2, 2), remote.HEALTH_EVERY_S + 5)
    assert m.banner == m.notice   # the stand-in notice alone again
    texts, errors = [], []

    def ask():
        try:
            texts.append(last(api.generate(far, "ttl-160m", PROMPT, max_new_tokens=64,
                                           do_sample=False)).ids)
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(texts) == 4 and all(texts)
    assert metric(lost, "request_success_total") > 0   # it takes requests again


def test_servers_all_down_are_an_error_not_a_stand_in():
    dead = f"http://127.0.0.1:{free_port()}"
    e = engine_for_tests(backends={"ttl-460m": "vllm"}, remotes={"ttl-460m": (dead,)})
    with pytest.raises(ModelUnavailable, match="TeenyTinyLlama-460m's server is not answering"):
        list(api.generate(e, "ttl-460m", PROMPT))
    assert not e.loaded()
