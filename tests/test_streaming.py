"""Streaming generation: text arrives in pieces, seeds reproduce, the end
token stops, and cancelling really stops the worker thread."""

import threading
import time

import pytest
import torch

from inference import decoder, formats, generation
from inference.sampling import Sampling

from conftest import workers_stopped


def prompt(m, text="A lhama é um animal"):
    return formats.encode(m.spec.prompt_format, m.tokenizer, {"text": text})


def test_text_streams_in_several_pieces(ttl, monkeypatch):
    forward = decoder.FORWARDS["llama"]

    def slow(*args):   # ~100 tokens/s, like the real model on a small CPU
        time.sleep(0.01)
        return forward(*args)

    monkeypatch.setitem(decoder.FORWARDS, "llama", slow)
    s = Sampling(max_new_tokens=40, seed=1)
    t0 = time.perf_counter()
    pieces = list(generation.stream(ttl, prompt(ttl), s))
    seconds = time.perf_counter() - t0
    assert len(pieces) > 3 and "".join(pieces).strip()
    # Pieces are joined so that a page gets at most ~25 updates a second.
    assert len(pieces) <= seconds / generation.UPDATE_EVERY_S + 2


def test_same_seed_same_text_different_seed_different_text(ttl):
    s = Sampling(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=40, seed=7)
    a = generation.complete(ttl, prompt(ttl), s)
    b = generation.complete(ttl, prompt(ttl), s)
    c = generation.complete(ttl, prompt(ttl), Sampling(**{**s.__dict__, "seed": 8}))
    assert a == b and a != c


def test_greedy_matches_the_argmax_of_the_logits(ttl):
    ids = prompt(ttl)
    s = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=5)
    new = list(generation.stream_tokens(ttl, ids, s))[-1][1]
    with torch.no_grad():
        logits = ttl.model(torch.tensor([ids + new])).logits[0, len(ids) - 1:-1]
    assert new == logits.argmax(-1).tolist()


def test_generation_stops_at_the_models_end_token(aira, monkeypatch):
    """Force <|endofcompletion|> as the first token: nothing is generated."""
    eos = aira.tokenizer.eos_token_id
    forward = decoder.FORWARDS["gpt2"]

    def ends(*args):
        logits = forward(*args)
        logits[:, eos] = 1e4
        return logits

    monkeypatch.setitem(decoder.FORWARDS, "gpt2", ends)
    s = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=50)
    items = list(generation.stream_tokens(aira, [50257, 100, 50259], s))
    assert [(text, ids) for text, ids, _ in items] == [("", [eos])]


def test_closing_the_stream_takes_the_request_out_of_the_batch_at_once(ttl):
    it = generation.stream(ttl, prompt(ttl), Sampling(max_new_tokens=1000, seed=1))
    next(it)
    it.close()   # returns once the request has left the batch
    d = decoder.decoder_for(ttl)
    assert not d.rows and not d.busy
    assert workers_stopped(5)


def test_cancel_event_ends_generation_early(ttl):
    cancel = threading.Event()
    out = []
    for piece in generation.stream(ttl, prompt(ttl), Sampling(max_new_tokens=1000, seed=1), cancel):
        out.append(piece)
        if len(out) == 3:
            cancel.set()
    assert len(out) < 20


def test_worker_errors_reach_the_caller(ttl):
    with pytest.raises(IndexError, match="index out of range"):   # no such token id
        list(generation.stream(ttl, [10**9], Sampling(max_new_tokens=3)))


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-1), "temperature"), (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=10**9), "max_new_tokens"), (dict(top_k=2.5), "whole number"),
    (dict(temperature=float("nan")), "number"), (dict(seed=-3), "seed")])
def test_out_of_range_settings_get_a_clear_message(bad, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**bad).checked()


def test_over_long_prompt_is_cut_from_the_left_keeping_bos():
    ids = [1] + list(range(100, 3000))
    cut, dropped = generation.fit_context(ids, 2048, 150, keep_first=1)
    assert len(cut) == 2048 - 150 and cut[0] == 1 and cut[-1] == ids[-1]
    assert dropped == len(ids) - len(cut)
