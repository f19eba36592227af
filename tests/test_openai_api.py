"""The OpenAI-compatible API, driven by the official `openai` client as a
user's own code would: models, completions and chat (streamed and not),
logprobs, n, stop, seeds, errors with their status, a disconnect, the API
key, and vLLM's /classify."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import free_port, workers_stopped


@pytest.fixture(scope="module")
def oai(app_url):
    return openai.OpenAI(base_url=app_url + "v1", api_key="unused", max_retries=0)


def test_models_lists_every_model_and_checkpoint(oai):
    ids = {m.id for m in oai.models.list()}
    assert {"ttl-160m", "ttl-160m@step100000", "ttl-460m@step1200000", "aira-2-124m",
            "tinyllama-tweet", "ttl-160m-imdb"} <= ids


def test_completion_with_logprobs_and_usage(oai):
    r = oai.completions.create(model="ttl-160m", prompt="A lhama é", max_tokens=12, seed=3,
                               temperature=1.0, logprobs=3)
    choice = r.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == len(choice.logprobs.tokens) <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in choice.logprobs.top_logprobs)


def test_streamed_completion_is_the_same_text_and_ends_with_a_reason(oai):
    args = dict(model="ttl-160m", prompt="A lhama é", max_tokens=20, seed=7, temperature=1.0)
    whole = oai.completions.create(**args).choices[0].text
    chunks = list(oai.completions.create(**args, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_n_completions_use_successive_seeds_and_reproduce(oai):
    args = dict(model="ttl-160m", prompt="A lhama", max_tokens=15, seed=5, temperature=1.0,
                top_p=1.0, n=2)
    first = [c.text for c in oai.completions.create(**args).choices]
    assert len(first) == 2 and first[0] != first[1]
    assert [c.text for c in oai.completions.create(**args).choices] == first
    one = oai.completions.create(**{**args, "n": 1, "seed": 6}).choices[0].text
    assert one == first[1]


def test_a_stop_string_ends_the_text_before_it(oai):
    args = dict(model="ttl-160m", prompt="A lhama é", max_tokens=40, temperature=0)
    whole = oai.completions.create(**args).choices[0].text
    word = whole.split()[2]
    cut = oai.completions.create(**args, stop=[word])
    assert cut.choices[0].text == whole[:whole.index(word)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in oai.completions.create(**args, stop=word, stream=True))
    assert streamed == cut.choices[0].text


def test_the_same_greedy_request_through_the_page_api_and_openai(oai, client):
    page = client.predict("A lhama é um animal", "ttl-160m", "main", 0.2, 20, 0.2, 1.2, 24, True,
                          api_name="/generate")[0]
    api = oai.completions.create(model="ttl-160m", prompt="A lhama é um animal", max_tokens=24,
                                 temperature=0).choices[0].text
    assert api and api == page


def test_checkpoints_are_models(oai):
    r = oai.completions.create(model="ttl-160m@step100000", prompt="A lhama", max_tokens=4)
    assert r.model == "ttl-160m@step100000" and r.choices[0].text is not None


def test_chat_on_aira_uses_its_format_and_streams(oai):
    messages = [{"role": "user", "content": "O que é uma <|endofinstruction|> lhama?"}]
    r = oai.chat.completions.create(model="aira-2-124m", messages=messages, max_tokens=16, seed=1,
                                    logprobs=True, top_logprobs=2)
    text = r.choices[0].message.content
    assert text and "<|" not in text and r.choices[0].message.role == "assistant"
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    chunks = list(oai.chat.completions.create(model="aira-2-124m", messages=messages,
                                              max_tokens=16, seed=1, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed.strip() == text.strip()


def test_chat_on_the_tweet_model_uses_its_own_template(oai):
    r = oai.chat.completions.create(model="tinyllama-tweet", max_tokens=4, temperature=0,
                                    messages=[{"role": "user", "content": "Great game!"}])
    assert r.choices[0].message.content is not None and r.usage.prompt_tokens > 40


def test_chat_on_a_model_without_a_template_points_to_completions(oai):
    with pytest.raises(openai.BadRequestError, match="/v1/completions"):
        oai.chat.completions.create(model="ttl-160m", messages=[{"role": "user", "content": "Oi"}])


@pytest.mark.parametrize("call, error, match", [
    (dict(model="no-such", prompt="x"), openai.NotFoundError, "does not exist"),
    (dict(model="ttl-160m", prompt="x", temperature=-1), openai.BadRequestError, "temperature"),
    (dict(model="ttl-160m", prompt="x", max_tokens=10**9), openai.BadRequestError, "max_new_tokens"),
    (dict(model="ttl-160m", prompt="x", n=9), openai.BadRequestError, "`n`"),
    (dict(model="ttl-160m", prompt="x", n=0), openai.BadRequestError, "from 1 to"),
    (dict(model="ttl-160m", prompt="x" * 30_000), openai.APIStatusError, "limit is"),
    (dict(model="ttl-160m-imdb", prompt="x"), openai.BadRequestError, "cannot serve"),
])
def test_bad_requests_get_an_openai_error_with_its_status(oai, call, error, match):
    with pytest.raises(error, match=match) as info:
        oai.completions.create(**call)
    if "limit is" in match:
        assert info.value.status_code == 413


def test_a_client_that_disconnects_stops_its_compute(app_url):
    body = {"model": "ttl-160m", "prompt": "A lhama", "max_tokens": 1000, "stream": True,
            "seed": 1, "temperature": 1.0}
    with httpx.stream("POST", app_url + "v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    assert workers_stopped(5)


def test_classify_in_vllms_shape(oai, app_url):
    r = httpx.post(app_url + "classify", json={"model": "ttl-160m-imdb",
                                              "input": ["Que filme bom!", "Horrível."]}).json()
    assert [d["index"] for d in r["data"]] == [0, 1]
    assert all(d["num_classes"] == 2 and abs(sum(d["probs"]) - 1) < 1e-4 and
               d["label"] in ("NEGATIVE", "POSITIVE") for d in r["data"])
    pair = httpx.post(app_url + "classify", json={"model": "ttl-160m-assin2",
                                                 "input": ["Um gato dorme.", "Um animal dorme."]})
    assert pair.status_code == 200 and len(pair.json()["data"]) == 1
    bad = httpx.post(app_url + "classify", json={"model": "ttl-160m-assin2", "input": "só um"})
    assert bad.status_code == 400 and "2 text(s)" in bad.json()["error"]["message"]


def test_an_api_key_is_required_when_set():
    import app
    from conftest import engine_for_tests
    engine = engine_for_tests(api_key="s3cret")
    demo = app.build(engine)
    port = free_port()
    app.launch(demo, engine, server_name="127.0.0.1", server_port=port,
               prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=url, api_key="s3cret").models.list().data
    finally:
        demo.close()


def test_an_api_stream_and_a_page_stream_share_decode_steps(app_url, client, engine):
    from inference import decoder
    d = decoder.decoder_for(engine.load("ttl-160m"))
    d.sizes.clear()   # a log of the last 1,000 steps: full by now in a whole run
    page = client.submit("A lhama é um animal", "ttl-160m", "main", 1.0, 0, 1.0, 1.0, 300, False,
                         1, 1, api_name="/generate")
    body = {"model": "ttl-160m", "prompt": "A PUCRS", "max_tokens": 300, "seed": 2,
            "temperature": 1.0, "top_p": 1.0}
    with httpx.stream("POST", app_url + "v1/completions", json={**body, "stream": True},
                      timeout=60) as r:
        for _ in r.iter_lines():
            pass
    page.result()
    assert max(d.sizes) >= 2   # one engine: both rows in the same steps


def test_disconnected_streams_give_their_place_back(app_url, oai):
    body = {"model": "ttl-160m", "prompt": "A lhama", "max_tokens": 500, "stream": True,
            "temperature": 1.0, "seed": 1}
    for _ in range(20):   # more than the places for API requests at once
        with httpx.stream("POST", app_url + "v1/completions", json=body, timeout=30) as r:
            next(line for line in r.iter_lines() if line.startswith("data: "))
    assert workers_stopped(5)
    assert oai.models.list().data   # not 503


def test_stop_cuts_the_logprobs_and_usage_too_streamed_or_not(oai):
    args = dict(model="ttl-160m", prompt="A lhama é", max_tokens=40, temperature=0, logprobs=1)
    whole = oai.completions.create(**args).choices[0].text
    stop = whole.split()[3]
    r = oai.completions.create(**args, stop=stop)
    c = r.choices[0]
    assert "".join(c.logprobs.tokens).startswith(c.text) and stop not in "".join(c.logprobs.tokens[:-1])
    assert r.usage.completion_tokens == len(c.logprobs.tokens)
    chunks = list(oai.completions.create(**args, stop=stop, stream=True))
    streamed = [t for ch in chunks if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert streamed == c.logprobs.tokens
    for ch in chunks:   # each chunk's log-probabilities are for text it or an earlier one carried
        lp = ch.choices[0].logprobs
        assert lp is None or len("".join(lp.tokens)) <= len(ch.choices[0].text) + len(c.text)


@pytest.mark.parametrize("body, status, match", [
    ({"model": "ttl-160m", "prompt": "x", "stream": "false"}, 400, "`stream` must be"),
    ({"model": "ttl-160m", "prompt": "x", "stream": True, "stream_options": ["x"]}, 400, "stream_options"),
    ({"model": "ttl-160m@bogus", "prompt": "x"}, 404, "has the checkpoints"),
    ({"model": "aira-2-124m", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 1024},
     400, "leaves no room for the question"),
    ({"model": "aira-2-124m@step1", "messages": [{"role": "user", "content": "Oi"}]}, 404, "checkpoints"),
])
def test_odd_fields_get_a_clear_error_before_any_answer(app_url, body, status, match):
    route = "v1/chat/completions" if "messages" in body else "v1/completions"
    r = httpx.post(app_url + route, json=body, timeout=30)
    assert r.status_code == status and match in r.json()["error"]["message"]


def test_a_deeply_nested_body_is_refused(app_url):
    r = httpx.post(app_url + "v1/completions", content="[" * 100_000,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
