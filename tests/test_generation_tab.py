"""The generation tab on stand-ins: card defaults, seeds, Stop, several
completions, "Why this token?" and perplexity checked against the logits,
over-long prompts."""

import math

import pytest
import torch

from inference import analysis, decoder, formats, generation
from inference.sampling import Sampling
from inference.registry import REGISTRY
from ui import generation as tab

from conftest import workers_stopped


def prompt_ids(m, text="A lhama é um animal"):
    return formats.encode(m.spec.prompt_format, m.tokenizer, {"text": text})


def last(gen):
    out = None
    for out in gen:
        pass
    return out


def test_defaults_are_the_cards_widget_values():
    card = dict(repetition_penalty=1.2, temperature=0.2, top_k=20, top_p=0.2, max_new_tokens=150)
    for key in ("ttl-160m", "ttl-460m"):
        s = Sampling.from_defaults(REGISTRY[key].defaults)
        assert {k: getattr(s, k) for k in card} == card and s.do_sample
    import inspect
    params = inspect.signature(tab.generate).parameters
    assert {k: params[k].default for k in card} == card


def test_same_seed_same_text_and_completions_use_successive_seeds(engine):
    args = dict(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=20, seed=5, completions=3)
    a = last(tab.generate(engine, "A lhama é um animal", **args))
    b = last(tab.generate(engine, "A lhama é um animal", **args))
    assert a[:4] == b[:4]
    assert all(a[:3]) and a[3] == "" and len(set(a[:3])) > 1
    one = last(tab.generate(engine, "A lhama é um animal", **{**args, "seed": 6, "completions": 1}))
    assert one[0] == a[1]      # completion 2 used seed + 1
    assert f"**{sum(len(r['ids']) for r in a[6]['completions'])}** new tokens" in a[4]


def test_new_tokens_are_counted_from_the_generated_ids(engine, ttl):
    out = last(tab.generate(engine, "A lhama é um animal", max_new_tokens=12, greedy=True,
                            repetition_penalty=1.0))
    run = out[6]
    ids = run["completions"][0]["ids"]
    assert 0 < len(ids) <= 12 and f"**{len(ids)}** new tokens" in out[4]
    prompt = run["prompt"]   # the completion reads on from the prompt, its first space kept
    whole, before = (ttl.tokenizer.decode(x, skip_special_tokens=True) for x in (prompt + ids, prompt))
    assert whole == before + out[0]
    assert f"**{len(prompt_ids(ttl))}** prompt tokens" in out[4] and "tokens/s" in out[4]


def test_stop_takes_the_request_out_of_the_batch_at_once(engine):
    gen = tab.generate(engine, "A lhama é um animal", max_new_tokens=1000, seed=1)
    next(gen), next(gen)
    gen.close()   # returns once the request has left the batch
    assert not decoder.decoder_for(engine.load("ttl-160m")).busy
    assert workers_stopped(5)


def test_empty_prompt_gets_a_message_not_an_error(engine):
    out = last(tab.generate(engine, "   "))
    assert out[:4] == ("",) * 4 and "Type a prompt" in out[4]


def test_over_long_prompt_is_cut_and_reported(engine, ttl):
    text = "A lhama é um animal dos Andes. " * 400
    assert len(prompt_ids(ttl, text)) > 2048
    gen = tab.generate(engine, text, max_new_tokens=100, greedy=True)
    first = next(gen)
    gen.close()
    run = first[6]
    dropped = len(prompt_ids(ttl, text)) - (2048 - 100)
    assert len(run["prompt"]) == 2048 - 100 and run["prompt"][0] == ttl.tokenizer.bos_token_id
    assert f"cut by **{dropped}** tokens from the left" in first[4]


@pytest.mark.parametrize("bad", [0, 5, 2.5, "two"])
def test_bad_completion_counts_get_a_message(engine, bad):
    import gradio as gr
    with pytest.raises(gr.Error):
        next(tab.generate(engine, "Oi", completions=bad))


def logits_of(m, ids):
    with torch.no_grad():
        return m.model(torch.tensor([ids])).logits[0].float()


def test_why_view_matches_the_logits_greedy(engine, ttl):
    ids = prompt_ids(ttl)
    s = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=8)
    _, new, drawn = list(generation.stream_tokens(ttl, ids, s))[-1]
    infos = analysis.explain(ttl.tokenizer, ids, drawn)
    probs = torch.softmax(logits_of(ttl, ids + new)[len(ids) - 1:-1], dim=-1)
    for i, (info, tok) in enumerate(zip(infos, new)):
        # recorded while decoding; the model's own pass over the whole text agrees
        assert info.id == tok and info.prob == pytest.approx(float(probs[i, tok]), abs=1e-3)
        assert info.alternatives[0] == (ttl.tokenizer.decode([tok]), info.prob)   # greedy: the argmax
        assert int(probs[i].argmax()) == tok


def test_why_view_matches_the_logits_sampled_with_penalty_and_temperature(ttl):
    ids = prompt_ids(ttl)
    s = Sampling(temperature=0.7, top_k=0, top_p=1.0, repetition_penalty=1.3,
                 max_new_tokens=8, seed=3)
    _, new, drawn = list(generation.stream_tokens(ttl, ids, s))[-1]
    infos = analysis.explain(ttl.tokenizer, ids, drawn)
    logits = logits_of(ttl, ids + new)
    for i, tok in enumerate(new):
        row, seen = logits[len(ids) - 1 + i].clone(), torch.tensor(sorted(set(ids + new[:i])))
        # the repetition penalty as the model's card applies it: divide positive, multiply negative
        row[seen] = torch.where(row[seen] > 0, row[seen] / 1.3, row[seen] * 1.3)
        p = torch.softmax(row / 0.7, dim=-1)
        assert infos[i].prob == pytest.approx(float(p[tok]), abs=1e-3) and infos[i].prob > 0


def test_perplexity_matches_the_logits(ttl):
    ids = prompt_ids(ttl, "A lhama é um animal dos Andes que vive em grupos.")
    p = analysis.perplexity(ttl, ids)
    logp = torch.log_softmax(logits_of(ttl, ids)[:-1], dim=-1)
    nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert p.value == pytest.approx(math.exp(float(nll.mean())), rel=1e-4)
    assert [t.surprise_bits for t in p.tokens] == pytest.approx(
        (nll / math.log(2)).tolist(), abs=1e-3)
    assert "".join(t.text for t in p.tokens).strip() == "A lhama é um animal dos Andes que vive em grupos."


def test_handlers_show_why_and_perplexity(engine):
    out = last(tab.generate(engine, "A lhama", max_new_tokens=6, seed=2, completions=2))
    spans, table = tab.explain(engine, out[6], 2)
    assert len(spans) == len(out[6]["completions"][1]["ids"]) == len(table)
    assert {band for _, band in spans} <= {name for _, name, _ in tab.PROB_BANDS}
    summary, tokens = tab.perplexity(engine, "A lhama é um animal.")
    assert "Perplexity **" in summary and tokens


def test_api_generate_streams_the_same_output(client):
    job = client.submit("A lhama é um animal", "ttl-160m", "main", 0.2, 20, 0.2, 1.2, 10, True,
                        None, 2, api_name="/generate")
    final = job.result()
    assert final[0] and final[0] == final[1] and "new tokens" in final[4]
    assert len(job.outputs()) > 2
    run = final[6]   # the run, as "Why this token?" reads it
    assert run["model"] == "ttl-160m" and len(run["completions"]) == 2
    assert all(0 < p <= 1 for _, p, _ in run["completions"][0]["drawn"])


def test_a_random_seed_is_shown_and_reproduces_the_text(engine):
    args = dict(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=15)
    out = last(tab.generate(engine, "A lhama", seed=-1, **args))   # the page's "random"
    seed = int(out[4].rsplit("seed ", 1)[1])
    again = last(tab.generate(engine, "A lhama", seed=seed, **args))
    assert again[0] == out[0] and f"seed {seed}" in again[4]
