"""llama.cpp (inference/llamacpp.py): our GGUF of a Llama stand-in computes
what transformers computes, and its Q8_0 is the one llama.cpp's own
quantiser makes; the `llamacpp` backend serves the app's requests with it
as the local decoder does: the same greedy text as llama.cpp alone, a
request's text independent of its neighbours, "Why this token?" within the
page's bound of fp32. llama.cpp is an optional extra
(requirements-llamacpp.txt, installed by CI): without it these tests are
skipped, and the benchmark prints no llama.cpp column."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from inference import decoder, formats, generation, llamacpp, standins
from inference.sampling import Sampling

from conftest import STANDIN_DIR, engine_for_tests

pytestmark = pytest.mark.skipif(
    not llamacpp.available(), reason="llama.cpp is an optional extra: pip install -r requirements-llamacpp.txt")

PROMPT = [1, 50, 60, 70, 80, 90, 100, 200, 300, 17]


def reference_logits(key: str, ids: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(STANDIN_DIR / key, dtype=torch.float32)
    if (STANDIN_DIR / key / "adapter").exists():
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(STANDIN_DIR / key / "adapter"))
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


@pytest.mark.parametrize("key", ["ttl-160m", "tinyllama-tweet"])
def test_f32_gguf_gives_the_next_token_logits_of_transformers(key, tmp_path):
    """TinyLlama has 2 key/value heads for 4 query heads and its LoRA
    adapter merged in: the rotary permutation and the merge both show."""
    adapter = STANDIN_DIR / key / "adapter" if key == "tinyllama-tweet" else None
    path = llamacpp.convert(STANDIN_DIR / key, "f32", adapter, out=tmp_path / "m.gguf")
    llm = llamacpp.open_model(path, context=64, threads=1)
    got, want = llamacpp.logits(llm, PROMPT), reference_logits(key, PROMPT)
    # llama.cpp keeps its key/value cache in fp16: close, not equal.
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert got.argmax() == want.argmax()
    # Token by token (the cache, the positions) gives what the whole prompt gives.
    first = llamacpp.greedy(llm, PROMPT, 3)
    assert first[0] == int(want.argmax()) and len(first) == 3


def test_q8_0_gguf_is_the_one_llama_cpps_quantiser_makes(tmp_path):
    import gguf
    import llama_cpp
    f32 = llamacpp.convert(STANDIN_DIR / "ttl-160m", "f32", out=tmp_path / "f32.gguf")
    ours = llamacpp.convert(STANDIN_DIR / "ttl-160m", "q8_0", out=tmp_path / "q8_0.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    theirs = tmp_path / "theirs.gguf"
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type, name
        assert np.array_equal(np.asarray(a[name].data), np.asarray(b[name].data)), name
    # Every matrix is 8-bit, the norms stay f32.
    assert a["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert a["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    llm = llamacpp.open_model(ours, context=64, threads=1)
    assert llamacpp.logits(llm, PROMPT).argmax() in np.argsort(reference_logits("ttl-160m", PROMPT))[-5:]


def test_gguf_is_kept_beside_the_model_and_written_once(tmp_path):
    import shutil
    model_dir = tmp_path / "ttl-160m"
    shutil.copytree(STANDIN_DIR / "ttl-160m", model_dir)
    path = llamacpp.convert(model_dir)
    assert path == model_dir / "model-q8_0.gguf"
    written = path.stat().st_mtime_ns
    assert llamacpp.convert(model_dir) == path and path.stat().st_mtime_ns == written
    assert llamacpp.weight_bytes_per_token(path) < path.stat().st_size


def test_streams_in_one_batch_each_draw_what_their_prompt_alone_draws(tmp_path):
    """The benchmark's llama.cpp column for 4 streams: every stream gets
    the greedy tokens of its own prompt decoded alone, and a second run
    starts from an empty cache."""
    path = llamacpp.convert(STANDIN_DIR / "ttl-160m", "q8_0", out=tmp_path / "q8_0.gguf")
    prompts = [PROMPT, PROMPT[::-1], [1] + PROMPT[5:] + PROMPT[1:5], [1, 17] + PROMPT[2:]]
    llm = llamacpp.open_model(path, context=64, threads=1)
    alone = [llamacpp.greedy(llm, p, 6) for p in prompts]
    compute = llamacpp.Compute(path, rows=4, context=64, threads=1)
    assert llamacpp.greedy_streams(compute, prompts, 6) == alone
    assert llamacpp.greedy_streams(compute, prompts[:2], 6) == alone[:2]


def test_only_llama_models_are_converted(tmp_path):
    with pytest.raises(ValueError, match="Llama models"):
        llamacpp.convert(STANDIN_DIR / "aira-2-124m", out=tmp_path / "a.gguf")


# -- the llamacpp backend ------------------------------------------------------------
@pytest.fixture(scope="module")
def served():
    return engine_for_tests(backend="llamacpp")


@pytest.mark.parametrize("key", ["ttl-160m", "tinyllama-tweet"])
def test_the_backend_draws_from_what_llama_cpp_alone_computes(served, key):
    """Each greedy token, and the probability "Why this token?" shows for
    it, is what llama.cpp alone computes after the same tokens (a tie
    between two tokens may go either way: a prompt read whole or token by
    token sums in another order, and the fp16 key/value cache rounds)."""
    m = served.load(key)
    assert "llama.cpp Q8_0 decoding" in m.source and m.banner.count("local decoder") == 0
    assert "llama.cpp Q8_0" in m.label
    ids = formats.encode("plain", m.tokenizer, {"text": "A lhama é um animal"})
    drawn = list(generation.stream_tokens(m, ids, Sampling(do_sample=False, max_new_tokens=12,
                                                           repetition_penalty=1.0)))[-1][2]
    [path] = (p for p in (Path(served.settings.data_dir) / "gguf").iterdir() if p.name.startswith(key))
    llm = llamacpp.open_model(path, context=64, threads=1)
    assert len(drawn) == 12
    for i, d in enumerate(drawn):
        probs = torch.softmax(torch.from_numpy(llamacpp.logits(llm, ids + [t.id for t in drawn[:i]])), -1)
        assert d.prob == pytest.approx(float(probs[d.id]), abs=5e-3)
        assert d.prob >= float(probs.max()) - 5e-3


def test_requests_decoded_together_each_get_their_text_alone(served):
    """Rows join and leave the batch (each llama.cpp sequence is moved or
    cleared as they do); sampled with seeds, every text is its solo twin:
    a neighbour changes nothing in llama.cpp's sequences."""
    m = served.load("ttl-160m")
    ids = formats.encode("plain", m.tokenizer, {"text": "A lhama"})
    asks = [Sampling(max_new_tokens=n, seed=seed, repetition_penalty=1.1)
            for n, seed in ((30, 1), (5, 2), (18, 3), (9, 4))]
    alone = [list(generation.stream_tokens(m, ids, s))[-1][1] for s in asks]
    together = [None] * len(asks)
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(
        i, list(generation.stream_tokens(m, ids, asks[i]))[-1][1])) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert max(m.decoder.sizes) > 1   # they did share steps
    # A stream closed early frees its sequence: the next request is its solo twin.
    stream = generation.stream_tokens(m, ids, asks[0])
    next(stream)
    stream.close()
    assert list(generation.stream_tokens(m, ids, asks[2]))[-1][1] == alone[2]


def test_a_chats_next_turn_reads_the_last_one_from_its_sequence_and_draws_as_a_cold_prompt(served):
    """The next turn starts with the last prompt and its answer: llama.cpp
    computes only what follows, in the sequence the answer left, and draws
    what a new engine, reading the whole prompt, draws (within the rounding
    of a prompt read in another split, as above)."""
    m = served.load("ttl-160m")
    s = Sampling(do_sample=False, max_new_tokens=6, repetition_penalty=1.0)
    first = formats.encode("plain", m.tokenizer, {"text": "O Rio Grande do Sul e suas cidades, " * 3})
    answer = [t.id for t in list(generation.stream_tokens(m, first, s))[-1][2]]
    turn = first + answer + m.tokenizer(" e Porto Alegre", add_special_tokens=False)["input_ids"]
    warm = list(generation.stream_tokens(m, turn, s))[-1][2]
    assert m.decoder.reused[-1] == len(first) + len(answer) - 1
    fresh = engine_for_tests(backend="llamacpp", data_dir=served.settings.data_dir).load("ttl-160m")
    cold = list(generation.stream_tokens(fresh, turn, s))[-1][2]
    assert fresh.decoder.reused[-1] == 0
    assert [d.id for d in warm] == [d.id for d in cold]
    for w, c in zip(warm, cold):
        assert w.prob == pytest.approx(c.prob, abs=5e-3)


def test_n_completions_decode_together_the_later_ones_copying_the_first_ones_prompt(served):
    """The first completion's sequence is still decoding when the next
    comes: llama.cpp copies it whole and drops what follows the prompt.
    Each completion draws what its seed draws alone in a fresh engine."""
    from inference import api
    m = served.load("ttl-160m")
    m.decoder.sizes.clear()
    text = "O Rio Grande do Sul e suas cidades, " * 4
    last = {p.index: p for p in list(api.generate(served, "ttl-160m", text, n=3, max_new_tokens=16,
                                                  seed=11, repetition_penalty=1.0))[1:]}
    n = len(m.tokenizer(text)["input_ids"])
    assert list(m.decoder.reused)[-2:] == [n - 1, n - 1] and max(m.decoder.sizes) == 3
    # Four would take every row (llama.cpp has 4): one is left for another visitor.
    m.decoder.sizes.clear()
    list(api.generate(served, "ttl-160m", text, n=4, max_new_tokens=16, seed=11))
    assert max(m.decoder.sizes) == 3
    fresh = engine_for_tests(backend="llamacpp", data_dir=served.settings.data_dir)
    for i in range(3):
        alone = list(api.generate(fresh, "ttl-160m", text, n=1, max_new_tokens=16, seed=11 + i,
                                  repetition_penalty=1.0))[-1]
        assert alone.ids == last[i].ids
        for a, b in zip(alone.drawn, last[i].drawn):
            assert a.prob == pytest.approx(b.prob, abs=5e-3)


def test_a_strangers_prompt_leaves_a_held_conversation_alone(served):
    """Every prompt shares its first id (BOS) with every other: a stranger's
    takes a sequence that holds nothing or the oldest, not the one a
    conversation left, so its next turn is still read from there."""
    m = served.load("ttl-160m")
    s = Sampling(do_sample=False, max_new_tokens=6, repetition_penalty=1.0)
    say = lambda text: formats.encode("plain", m.tokenizer, {"text": text})
    chat = say("Uma conversa longa sobre o Rio Grande do Sul e suas cidades " * 3)
    answer = [t.id for t in list(generation.stream_tokens(m, chat, s))[-1][2]]
    for text in ("A lhama", "Porto Alegre", "O pampa"):   # three strangers, one after the other
        list(generation.stream_tokens(m, say(text), s))
    assert all(k == 0 for k in list(m.decoder.reused)[-3:])
    list(generation.stream_tokens(m, chat + answer + say("E depois?")[1:], s))
    assert m.decoder.reused[-1] == len(chat) + 5


def test_why_this_token_after_a_long_prompt_is_within_the_pages_bound_of_fp32(served):
    m = served.load("ttl-160m")
    reference = engine_for_tests(fast="off").load("ttl-160m")
    prompt = m.tokenizer("\n".join(standins._corpus_lines()))["input_ids"][:448]
    s = Sampling(do_sample=False, max_new_tokens=64, repetition_penalty=1.0)
    _, new, drawn = list(generation.stream_tokens(m, prompt, s))[-1]
    with torch.inference_mode():
        probs = torch.softmax(reference.model(torch.tensor([prompt + new])).logits[0].float(), -1)
    for i, d in enumerate(drawn):
        assert d.prob == pytest.approx(float(probs[len(prompt) - 1 + i, d.id]), abs=0.02)


def test_a_model_llama_cpp_cannot_take_generates_locally_and_its_banner_says_why(served):
    m = served.load("aira-2-124m")
    assert "generates with the local decoder" in m.banner and "gpt2" in m.banner
    assert "llama.cpp" not in m.label
    assert isinstance(decoder.decoder_for(m).compute, decoder.Torch)
    ids = formats.encode("plain", m.tokenizer, {"text": "Olá"})
    assert list(generation.stream_tokens(m, ids, Sampling(max_new_tokens=4, seed=1)))[-1][1]


def test_auto_where_llama_cpp_is_the_faster_gives_it_the_served_llamas_alone(monkeypatch, tmp_path):
    """On a CPU without VNNI `auto` picks llama.cpp (llamacpp.preferred):
    the Llama models decode there, and Aira-2, which it cannot take,
    generates locally without a banner about a backend nobody asked for."""
    monkeypatch.setattr(llamacpp, "preferred", lambda: True)
    e = engine_for_tests(data_dir=str(tmp_path))
    m = e.load("ttl-160m")
    assert "llama.cpp Q8_0" in m.label
    ids = formats.encode("plain", m.tokenizer, {"text": "A lhama"})
    assert len(list(generation.stream_tokens(m, ids, Sampling(max_new_tokens=5, seed=1)))[-1][2]) == 5
    aira = e.load("aira-2-124m")
    assert "local decoder" not in (aira.banner or "") and "llama.cpp" not in aira.label
    assert isinstance(decoder.decoder_for(aira).compute, decoder.Torch)
    # Nor is a GGUF written for each training checkpoint (the Compare tab's
    # timeline reads them all), or for the tweet adapter, which scores labels.
    for key, revision in (("ttl-160m", "step100000"), ("tinyllama-tweet", None)):
        other = e.load(key, revision)
        assert "llama.cpp" not in other.label and "local decoder" not in (other.banner or "")
    [written] = (Path(e.settings.data_dir) / "gguf").iterdir()
    assert written.name.startswith("ttl-160m@main-")


def test_the_gguf_is_written_once_and_found_again_by_a_new_engine(served):
    served.load("ttl-160m")
    folder = Path(served.settings.data_dir) / "gguf"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    engine_for_tests(backend="llamacpp").load("ttl-160m")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
