"""The batched decoder: its hand-written forward computes what transformers'
forward computes, requests that arrive together share decode steps, and each
request's text does not depend on who else is being served."""

import threading

import pytest
import torch

from inference import decoder, formats, generation, sampling
from inference.decoder import Where
from inference.sampling import Sampling

from conftest import engine_for_tests, wait_until


@pytest.fixture(scope="module")
def fp32_engine():
    """Stand-ins without the CPU fast path, so both sides have the same weights."""
    return engine_for_tests(fast="off")


@pytest.mark.parametrize("key", ["ttl-160m", "aira-2-124m"])
def test_prefill_and_batched_steps_match_transformers(fp32_engine, key):
    m = fp32_engine.load(key)
    prompts = [[5, 100, 200, 300, 400, 17], [5, 900, 41], [5, 77, 78, 79, 80, 81, 82, 83, 84]]
    cache = decoder.new_cache(m)
    cache.reserve(len(prompts), 32)
    forward = decoder.FORWARDS[m.model.config.model_type]
    nexts, lengths = [], []
    with torch.inference_mode():
        for row, ids in enumerate(prompts):
            where = Where(slice(row, row + 1), torch.arange(len(ids))[None], len(ids), None)
            logits = forward(m.model, torch.tensor([ids]), where, cache)
            reference = m.model(torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(logits[0], reference, atol=1e-4, rtol=1e-4)
            nexts.append(int(reference.argmax()))
            lengths.append(len(ids))
        for _ in range(3):   # three decode steps with all rows together
            positions = torch.tensor(lengths)[:, None]
            length = max(lengths) + 1
            mask = (torch.arange(length)[None] <= positions)[:, None, None]
            logits = forward(m.model, torch.tensor(nexts)[:, None],
                             Where(slice(0, len(prompts)), positions, length, mask), cache)
            for row, ids in enumerate(prompts):
                ids.append(nexts[row])
                reference = m.model(torch.tensor([ids])).logits[0, -1]
                torch.testing.assert_close(logits[row], reference, atol=1e-4, rtol=1e-4)
                nexts[row] = int(reference.argmax())
                lengths[row] += 1


def test_greedy_stream_is_transformers_greedy_search(fp32_engine):
    m = fp32_engine.load("ttl-160m")
    ids = formats.encode("plain", m.tokenizer, {"text": "A lhama é um animal"})
    s = Sampling(do_sample=False, repetition_penalty=1.3, max_new_tokens=12)
    new = list(generation.stream_tokens(m, ids, s))[-1][1]
    with torch.inference_mode():
        out = m.model.generate(torch.tensor([ids]), do_sample=False, repetition_penalty=1.3,
                               max_new_tokens=12, temperature=None, top_p=None, top_k=None,
                               pad_token_id=m.tokenizer.pad_token_id)
    assert new == out[0, len(ids):].tolist()


def test_concurrent_requests_share_steps_and_keep_their_own_text(fp32_engine):
    ttl = fp32_engine.load("ttl-160m")
    ids = formats.encode("plain", ttl.tokenizer, {"text": "A lhama é um animal"})
    samplings = [Sampling(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=24, seed=seed)
                 for seed in range(4)]
    alone = [generation.complete(ttl, ids, s) for s in samplings]
    d = decoder.decoder_for(ttl)
    d.sizes.clear()
    together = [None] * 4
    start = threading.Barrier(4)

    def run(i):
        start.wait()
        together[i] = generation.complete(ttl, ids, samplings[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(d.sizes) >= 3, "the four requests should have been decoded together"
    assert together == alone   # each row draws with its own seeded generator


def test_with_int8_weights_batched_text_starts_as_alone_and_stays_on_topic(ttl):
    """int8 activations are scaled per batch, so a neighbour can move a logit
    by a hair and a sampled text part from its solo twin after a few tokens.
    The first token (its prefill runs alone) is always the same."""
    ids = formats.encode("plain", ttl.tokenizer, {"text": "A lhama é um animal"})
    s = Sampling(max_new_tokens=8, seed=3)
    alone = list(generation.stream_tokens(ttl, ids, s))[-1][1]
    out = [None] * 3
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(
        i, list(generation.stream_tokens(ttl, ids, s))[-1][1])) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o[0] == alone[0] and len(o) == len(alone) for o in out)


def test_a_request_that_joins_late_and_one_that_leaves_early(ttl):
    ids = formats.encode("plain", ttl.tokenizer, {"text": "A lhama"})
    d = decoder.decoder_for(ttl)
    long = d.submit(ids, Sampling(do_sample=False, max_new_tokens=60), stop=frozenset())
    first = long.out.get()   # the long one is decoding
    short = d.submit(ids, Sampling(do_sample=False, max_new_tokens=3), stop=frozenset())
    got = [short.out.get() for _ in range(4)]
    assert got[-1] is None and len(got[:-1]) == 3
    rest = []
    while (t := long.out.get()) is not None:
        rest.append(t)
    assert len([first] + rest) == 60
    assert short.released.is_set() and long.released.is_set()


def test_cache_grows_by_doubling_and_is_given_back_when_idle_but_a_row(ttl):
    c = decoder.new_cache(ttl)
    c.reserve(1, 10)
    assert c.kv.shape[2] == 1 and c.kv.shape[4] == decoder.MIN_LENGTH
    c.kv[:, :, 0, :, :3] = 1.0
    c.reserve(3, decoder.MIN_LENGTH + 1)
    assert c.kv.shape[2] == 4 and c.kv.shape[4] == 2 * decoder.MIN_LENGTH
    assert float(c.kv[:, :, 0, :, :3].min()) == 1.0   # kept across the growth
    c.reserve(100, 10**6)
    assert c.kv.shape[2] == decoder.MAX_ROWS and c.kv.shape[4] == c.context
    # Idle, the decoder keeps the row freed last, no longer than its ids need
    # (the next completion or chat turn starts from it), and gives the rest back.
    ids = formats.encode("plain", ttl.tokenizer, {"text": "A lhama"})
    generation.complete(ttl, ids, Sampling(max_new_tokens=3, seed=1))
    d = decoder.decoder_for(ttl)
    assert wait_until(lambda: ttl.worker.idle and d.compute.cache.kv.shape[2] == 1, 2)
    assert d.compute.cache.kv.shape[4] == decoder.MIN_LENGTH
    assert wait_until(lambda: not ttl.worker.running, ttl.worker.linger_s + 2)   # then the thread ends


def test_top_k_and_top_p_keep_the_tokens_transformers_keeps():
    from transformers import TopKLogitsWarper, TopPLogitsWarper, TemperatureLogitsWarper
    torch.manual_seed(0)
    logits = torch.randn(1000) * 3
    for top_k, top_p, temp in [(20, 0.2, 0.2), (50, 1.0, 0.1), (0, 0.9, 1.0), (0, 1.0, 0.7)]:
        s = Sampling(temperature=temp, top_k=top_k, top_p=top_p)
        ids, probs = sampling.candidates(logits, s)
        x = TemperatureLogitsWarper(temp)(None, logits[None].clone())
        x = TopKLogitsWarper(top_k)(None, x) if top_k else x
        x = TopPLogitsWarper(top_p)(None, x) if top_p < 1 else x
        expected = torch.softmax(x[0], -1)
        got = torch.zeros(1000).scatter_(0, ids, probs)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_a_prompt_that_fails_alone_does_not_stop_the_batch(ttl):
    ids = formats.encode("plain", ttl.tokenizer, {"text": "A lhama"})
    d = decoder.decoder_for(ttl)
    running = d.submit(ids, Sampling(do_sample=False, max_new_tokens=40), stop=frozenset())
    running.out.get()   # decoding
    broken = d.submit([10**9], Sampling(max_new_tokens=4))   # no such token: its prefill fails
    assert isinstance(broken.out.get(), IndexError)
    tokens = []
    while (t := running.out.get()) is not None:
        assert isinstance(t, sampling.Drawn), t
        tokens.append(t)
    assert len(tokens) == 39


def test_an_over_long_prompt_is_refused_with_a_message(ttl):
    with pytest.raises(ValueError, match="A prompt must have 1 to 2047 tokens"):
        list(generation.stream_tokens(ttl, [5] * 5000, Sampling(max_new_tokens=4)))


def greedy(m, ids, new=8):
    s = Sampling(do_sample=False, max_new_tokens=new, repetition_penalty=1.0)
    return list(generation.stream_tokens(m, ids, s, None))[-1][2]


@pytest.mark.parametrize("key", ["ttl-160m", "aira-2-124m"])
def test_a_chats_next_turn_is_prefilled_from_where_the_last_answer_ends(fp32_engine, key):
    """The next turn's prompt starts with the last one and its answer: only
    what follows is computed, and its text and "Why this token?" are what
    transformers computes from the whole prompt."""
    m = fp32_engine.load(key)
    d = decoder.decoder_for(m)
    first = formats.encode("plain", m.tokenizer, {"text": "A lhama é um animal dos Andes, " * 3})
    answer = [t.id for t in greedy(m, first, 6)]
    turn = first + answer + m.tokenizer(" e a alpaca também", add_special_tokens=False)["input_ids"]
    drawn = greedy(m, turn)
    assert d.reused[-1] == len(first) + len(answer) - 1   # its last token was never fed back
    with torch.inference_mode():
        out = m.model.generate(torch.tensor([turn]), do_sample=False, max_new_tokens=8,
                               temperature=None, top_p=None, top_k=None,
                               pad_token_id=m.tokenizer.pad_token_id or 0)
        probs = torch.softmax(m.model(torch.tensor([turn])).logits[0, -1], -1)
    assert [t.id for t in drawn] == out[0, len(turn):].tolist()
    assert drawn[0].prob == pytest.approx(float(probs[drawn[0].id]), abs=1e-5)


def test_with_int8_weights_a_prompt_read_from_a_held_prefix_is_drawn_bit_for_bit_as_cold(ttl):
    """Each row's int8 product depends on that row alone, so the keys and
    values a finished request left are those a cold prefill computes."""
    d = decoder.decoder_for(ttl)
    lead = formats.encode("plain", ttl.tokenizer, {"text": "A lhama"})
    prompt = formats.encode("plain", ttl.tokenizer, {"text": "O Rio Grande do Sul tem " * 8})
    greedy(ttl, lead)   # row 0 now holds a prompt that shares only BOS with `prompt`
    cold = greedy(ttl, prompt)
    assert d.reused[-1] == 0   # too few to look up (decoder.MIN_SHARED)
    greedy(ttl, lead)
    greedy(ttl, prompt[:20])   # row 0 now holds `prompt`'s first 20 ids, then its own 7
    warm = greedy(ttl, prompt)
    assert d.reused[-1] >= 20
    assert warm == cold


def test_n_completions_decode_together_and_compute_their_prompt_once(engine):
    """The later completions copy the prompt's keys and values from the
    first, which is still decoding, and each is the text its seed gives
    alone (int8: a row's product depends on that row alone)."""
    from inference import api
    m = engine.load("ttl-160m")
    d = decoder.decoder_for(m)
    d.sizes.clear()
    pieces = list(api.generate(engine, "ttl-160m", "Uma história " * 30, n=3, max_new_tokens=24,
                               seed=2, repetition_penalty=1.0))[1:]
    n = len(m.tokenizer("Uma história " * 30)["input_ids"])
    assert list(d.reused)[-2:] == [n - 1, n - 1]
    assert max(d.sizes) == 3
    assert {p.index for p in pieces[:len(pieces) // 2]} == {0, 1, 2}   # interleaved
    last = {p.index: p.ids for p in pieces}
    for i in range(3):
        alone = list(api.generate(engine, "ttl-160m", "Uma história " * 30, n=1, max_new_tokens=24,
                                  seed=2 + i, repetition_penalty=1.0))[-1]
        assert alone.ids == last[i]


def test_closing_a_request_ends_every_completion_it_started(engine):
    from inference import api
    m = engine.load("ttl-160m")
    events = api.generate(engine, "ttl-160m", "A lhama " * 20, n=4, max_new_tokens=600, seed=4,
                          repetition_penalty=1.0)
    pieces = [next(events) for _ in range(12)][1:]
    assert len({p.index for p in pieces}) > 1
    events.close()
    assert not decoder.decoder_for(m).busy


def test_a_prompt_sent_while_the_same_one_decodes_copies_its_keys_and_values(fp32_engine):
    """Two visitors send the same long prompt: the second is read from the
    first's row, still decoding, and draws what transformers draws."""
    m = fp32_engine.load("ttl-160m")
    d = decoder.decoder_for(m)
    prompt = formats.encode("plain", m.tokenizer, {"text": "O Rio Grande do Sul tem " * 8})
    greedy_s = lambda n: Sampling(do_sample=False, max_new_tokens=n, repetition_penalty=1.0)
    first = d.submit(prompt, greedy_s(300), stop=frozenset())
    first.out.get()
    drawn = greedy(m, prompt, 6)
    assert d.reused[-1] == len(prompt) - 1 and not first.released.is_set()
    with torch.inference_mode():
        out = m.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=6,
                               temperature=None, top_p=None, top_k=None, pad_token_id=0)
        probs = torch.softmax(m.model(torch.tensor([prompt])).logits[0, -1], -1)
    assert [t.id for t in drawn] == out[0, len(prompt):].tolist()
    assert drawn[0].prob == pytest.approx(float(probs[drawn[0].id]), abs=1e-5)
    first.cancel.set()
    assert wait_until(first.released.is_set, 10)


def test_a_row_freed_mid_batch_keeps_its_prefix_while_the_batch_goes_on(fp32_engine):
    """A row leaving the middle of the batch trades places with the last
    one: what the freed row holds must follow it there."""
    m = fp32_engine.load("ttl-160m")
    d = decoder.decoder_for(m)
    say = lambda text: formats.encode("plain", m.tokenizer, {"text": text})
    greedy_s = lambda n: Sampling(do_sample=False, max_new_tokens=n, repetition_penalty=1.0)
    first = d.submit(say("A lhama"), greedy_s(300), stop=frozenset())
    first.out.get()
    short = say("O Rio Grande do Sul")
    middle = d.submit(short, greedy_s(40), stop=frozenset())
    answer = [middle.out.get().id]
    d.sizes.clear()
    last = d.submit(say("Porto Alegre"), greedy_s(300), stop=frozenset())
    last.out.get()
    while (t := middle.out.get()) is not None:
        answer.append(t.id)
    assert 3 in d.sizes   # `middle` left from between the other two
    follow = short + answer + [42]
    drawn = greedy(m, follow, 4)
    assert d.reused[-1] == len(short) + 39
    with torch.inference_mode():
        out = m.model.generate(torch.tensor([follow]), do_sample=False, max_new_tokens=4,
                               temperature=None, top_p=None, top_k=None, pad_token_id=0)
    assert [t.id for t in drawn] == out[0, len(follow):].tolist()
    assert not (first.released.is_set() or last.released.is_set())   # it was decoded mid-batch
    for r in (first, last):
        r.cancel.set()
        assert wait_until(r.released.is_set, 10)


def test_no_memory_to_keep_a_row_when_idle_gives_the_whole_cache_back(fp32_engine, monkeypatch):
    m = fp32_engine.load("aira-2-124m")
    d = decoder.decoder_for(m)

    def no_memory(self, row, length):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")
    monkeypatch.setattr(decoder.Cache, "keep", no_memory)
    ids = formats.encode("plain", m.tokenizer, {"text": "Olá"})
    greedy(m, ids, 3)
    assert wait_until(lambda: m.worker.idle and d.compute.cache.kv is None, 2)
    assert len(greedy(m, ids, 3)) == 3   # the worker goes on
