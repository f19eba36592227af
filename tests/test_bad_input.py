"""Bad input, through the API (gradio_client sends what the UI never would)
and through the engine: each gets a clear message, nothing crashes or hangs,
and the next request works."""

import html

import gradio as gr
import pytest
from gradio_client.exceptions import AppError

from inference import classification, formats, generation
from inference.sampling import Sampling

from conftest import workers_stopped

# Every served model's special-token strings, typed as text.
SPECIALS = {
    "aira": "<|startofinstruction|> <|endofinstruction|> <|endofcompletion|> <|pad|> <|endoftext|>",
    "llama": "<s> </s> <unk> <pad>",
    "bert": "[CLS] [SEP] [PAD] [MASK] [UNK]",
    "zephyr": "<|system|>\nsystem <|user|>\nuser <|assistant|>\n",
}
ALL_SPECIALS = " ".join(SPECIALS.values())
ODD_TEXT = {
    "control": "A lhama\x00\x07\x1b[31m é\x7f um\r\n animal\x0c",
    "emoji": "A lhama 🦙🇧🇷👩‍👩‍👧 é um animal 😀",
    "rtl": "A lhama مرحبا بالعالم שלום עולם \u202eé um animal",
    "specials": ALL_SPECIALS,
}
HUGE = "A lhama é um animal. " * 10_000   # 210,000 characters


def assert_still_serving(client):
    text, *_, figures, _, _ = client.predict("A lhama", "ttl-160m", "main", 0.2, 20, 0.2, 1.2, 8,
                                          api_name="/generate")
    assert isinstance(text, str) and "prompt tokens" in figures
    assert workers_stopped()


def refused(client, api_name, *args, match):
    with pytest.raises(AppError, match=match):
        client.predict(*args, api_name=api_name)
    assert_still_serving(client)


# -- text ------------------------------------------------------------------

EMPTY = ["", "   ", "\n\t  \n", "\x00\x01\x7f"]


@pytest.mark.parametrize("text", EMPTY)
@pytest.mark.parametrize("api_name, extra", [
    ("/chat", ()), ("/classify", ("ttl-160m-imdb", ""))])
def test_empty_text_is_refused_with_a_message(client, text, api_name, extra):
    refused(client, api_name, text, *extra, match="Please type some")


@pytest.mark.parametrize("text", EMPTY)
def test_empty_prompt_gets_a_message_not_an_error(client, text):
    """The generation tab asks for a prompt instead of failing (and the
    control characters alone count as nothing typed)."""
    *texts, figures, _, _ = client.predict(text, "ttl-160m", "main", 0.2, 20, 0.2, 1.2, 8,
                                        api_name="/generate")
    assert texts == [""] * 4 and "Type a prompt" in figures
    assert_still_serving(client)


def test_empty_prompt_warns_in_the_page(engine):
    from ui import generation as tab
    with pytest.warns(UserWarning, match="Type a prompt first"):
        *texts, figures, banner, run = list(tab.generate(engine, " \n", max_new_tokens=4))[-1]
    assert texts == [""] * 4 and "Type a prompt" in figures and run is None


@pytest.mark.parametrize("api_name, extra", [
    ("/generate", ()), ("/chat", ()), ("/classify", ("ttl-160m-imdb", ""))])
def test_200k_character_text_is_refused_with_its_length(client, api_name, extra):
    refused(client, api_name, HUGE, *extra, match="210,000 characters long; the limit is")


def test_pair_classifier_needs_its_second_text(client):
    refused(client, "/classify", "Quem ganhou?", "ttl-160m-faquad-nli", "  ",
            match="Please type some answer")


@pytest.mark.parametrize("kind", ODD_TEXT)
def test_odd_text_is_generated_from(client, kind):
    text, *_, figures, _, _ = client.predict(ODD_TEXT[kind], "ttl-160m", "main", 0.2, 20, 0.2, 1.2,
                                          8, api_name="/generate")
    assert isinstance(text, str) and "prompt tokens" in figures


@pytest.mark.parametrize("kind", ODD_TEXT)
def test_odd_text_gets_a_chat_answer(client, kind):
    answer = client.predict(ODD_TEXT[kind], None, 0.2, 30, 0.3, 1.2, 8, api_name="/chat")
    assert isinstance(answer, str) and answer.strip()


@pytest.mark.parametrize("kind", ODD_TEXT)
@pytest.mark.parametrize("key", ["ttl-160m-imdb", "tinyllama-tweet"])
def test_odd_text_is_classified(client, kind, key):
    result, _ = client.predict(ODD_TEXT[kind], key, "", api_name="/classify")
    assert abs(sum(c["confidence"] for c in result["confidences"]) - 1) < 1e-4


def test_chat_history_from_an_earlier_answer_is_sent_back(client, engine):
    from ui import chat as tab
    question = "Oi <|endofinstruction|>"
    answer = client.predict(question, None, 0.2, 30, 0.3, 1.2, 8, api_name="/chat")
    history = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    assert client.predict("E agora?", history, 0.2, 30, 0.3, 1.2, 8, api_name="/chat").strip()
    # The same history through the tab's handler is used as the earlier turn.
    *_, (shown, _, _) = tab.respond(engine, "E agora?", history, True, max_new_tokens=8)
    assert [h["role"] for h in shown] == ["user", "assistant"] * 2
    assert html.unescape(shown[0]["content"]) == question   # the Chatbot gets it as text


# Malformed entries are dropped rather than trusted (ui.chat._messages): the
# question is still answered, from the entries that are well formed.
JUNK = [{"role": "user"}, {"role": "assistant", "content": "x"}, {"role": "system",
        "content": "ignore"}, {"content": "no role"}, 42, None, "text", ["user", "Oi"],
        {"role": "user", "content": [{"type": "image"}]}]


def test_chat_with_a_malformed_history_drops_the_junk_and_answers(client):
    from ui import chat as tab
    assert tab._messages(JUNK) == [{"role": "assistant", "content": "x"}]
    answer = client.predict("Oi", JUNK, 0.2, 30, 0.3, 1.2, 8, api_name="/chat")
    assert isinstance(answer, str) and answer.strip()
    assert_still_serving(client)


# -- settings --------------------------------------------------------------

GEN = ["A lhama", "ttl-160m", "main", 0.2, 20, 0.2, 1.2, 8, False, None, 1]


def gen_args(**changes):
    names = ["text", "model", "revision", "temperature", "top_k", "top_p", "rep",
             "max_new_tokens", "greedy", "seed", "completions"]
    return [changes.get(n, v) for n, v in zip(names, GEN)]


# Gradio checks slider bounds, number ranges and dropdown choices before the
# handler runs; the handler and the engine check again (below) for callers
# that skip the components. The checkpoint dropdown takes custom values (any
# model's checkpoints), so the engine refuses a checkpoint the model lacks.
@pytest.mark.parametrize("changes, match", [
    (dict(temperature=-1.0), "Value -1.0 is less than minimum value 0.01"),
    (dict(temperature=0.0), "less than minimum value"),
    (dict(top_p=1.5), "Value 1.5 is greater than maximum value 1.0"),
    (dict(top_k=-5), "less than minimum value 0"),
    (dict(rep=0.0), "less than minimum value 1.0"),
    (dict(max_new_tokens=10**9), "1000000000 is greater than maximum value 1024"),
    (dict(seed=-2), "Value -2 is less than minimum value -1"),
    (dict(seed=2**40), "greater than maximum value 4294967295"),
    (dict(temperature="hot"), "Expected a `float`"),
    (dict(top_k=[1, 2]), "Expected a `float`"),
    (dict(max_new_tokens=None), "Expected a `float`"),
    (dict(model="no-such-model"), "no-such-model is not in the list of choices"),
    (dict(model="../../etc/passwd"), "not in the list of choices"),
    (dict(model="ttl-160m-imdb"), "not in the list of choices"),
    (dict(revision="step999"), "has no checkpoint 'step999'. Choose one of: main"),
    (dict(revision="../../../tmp"), "has no checkpoint '../../../tmp'"),
    (dict(completions=5), "Value 5 is greater than maximum value 4"),
    (dict(completions=0), "Value 0 is less than minimum value 1"),
])
def test_bad_generation_settings_get_a_message(client, changes, match):
    refused(client, "/generate", *gen_args(**changes), match=match)


# /chat is a plain API function (no components in front): its settings are
# checked by inference.sampling.Sampling and the tab.
@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), r"temperature must be between 0.01 and 5.0, got -0.5"),
    (dict(temperature=0.0), "temperature must be between"),
    (dict(temperature=False), "temperature must be a number, got False"),
    (dict(temperature="hot"), "temperature must be a number, got 'hot'"),
    (dict(top_p=2.0), r"top_p must be between 0.01 and 1.0, got 2.0"),
    (dict(top_k=-5), "top_k must be between 0 and"),
    (dict(top_k=2.5), "top_k must be a whole number, got 2.5"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be between 1.0"),
    (dict(max_new_tokens=10**9), "max_new_tokens must be between 1 and 1024, got 1000000000"),
    (dict(max_new_tokens=[8]), "max_new_tokens must be a number"),
    (dict(seed=-2), "seed must be between -1 and 4294967295, got -2"),
    (dict(seed=2**40), "seed must be between -1 and 4294967295"),
    (dict(n=9), "number of candidates must be a whole number from 1 to"),
    (dict(n=True), "number of candidates must be a whole number"),
    (dict(history="not a history"), "The history must be a list of"),
    (dict(message=["Oi"]), "The question must be text"),
])
def test_bad_chat_settings_get_a_message(client, kwargs, match):
    with pytest.raises(AppError, match=match):
        client.predict(**{"message": "Oi", "max_new_tokens": 8, **kwargs}, api_name="/chat")
    assert_still_serving(client)


# The classifier input takes any value (a model fine-tuned after the page was
# built is a choice too); the engine names the classifiers there are.
@pytest.mark.parametrize("key, match", [
    ("no-such-model", "Unknown model 'no-such-model'"), ("ttl-160m", "'ttl-160m' is not a classifier"),
    ("aira-2-124m", "is not a classifier"), ("reward-pt", "is not a classifier"),
    ("../ttl-160m-imdb", "Unknown model '../ttl-160m-imdb'"),
    ("custom/../ttl-160m-imdb", "Unknown model"), ("custom/no-such", "Unknown model")])
def test_a_key_that_is_not_a_classifier_gets_a_message(client, key, match):
    refused(client, "/classify", "Bom", key, "", match=match + ".*Choose one of: .*ttl-160m-imdb")


@pytest.mark.parametrize("lines, key, match", [
    (None, "ttl-160m-imdb", "Upload a CSV or paste one text per line"),
    ("\n\n", "ttl-160m-imdb", "Upload a CSV or paste one text per line"),
    ("Bom\n" * 1001, "ttl-160m-imdb", "1,001 rows; the limit is 1,000"),
    ("Bom", "ttl-160m", "'ttl-160m' is not a classifier. Choose one of"),
])
def test_bad_batches_get_a_message(client, lines, key, match):
    refused(client, "/classify_batch", None, lines, key, match=match)


def test_numbers_sent_as_text_are_answered_as_text(client):
    result, _ = client.predict(12345, "ttl-160m-faquad-nli", 42, api_name="/classify")
    assert result["label"] in ("UNSUITABLE", "SUITABLE")


# -- the handlers directly (no component in front) -------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(model_key="no-such-model"), "Unknown model 'no-such-model'"),
    (dict(model_key=["ttl-160m"]), "Unknown model"),
    (dict(model_key="ttl-160m-imdb"), "'ttl-160m-imdb' is not a text-generation model"),
    (dict(revision="../../../tmp"), "no checkpoint '../../../tmp'"),
    (dict(temperature=-1.0), "temperature must be between"),
    (dict(top_p=1.5), "top_p must be between"),
    (dict(max_new_tokens=10**9), "max_new_tokens must be between"),
    (dict(temperature="hot"), "temperature must be a number"),
    (dict(temperature=float("nan")), "temperature must be a number, got nan"),
    (dict(text=12345), "must be text"),
    (dict(completions=0), "Completions must be a whole number from 1 to 4, got 0"),
    (dict(completions=5), "from 1 to 4, got 5"),
    (dict(completions=1.5), "from 1 to 4, got 1.5"),
    (dict(completions=True), "from 1 to 4, got True"),
    (dict(completions="two"), "from 1 to 4, got 'two'"),
])
def test_generate_handler_refuses_bad_input(engine, kwargs, match):
    from ui import generation as tab
    args = dict(text="A lhama", model_key="ttl-160m", revision="main", max_new_tokens=4)
    with pytest.raises(gr.Error, match=match):
        list(tab.generate(engine, **{**args, **kwargs}))


@pytest.mark.parametrize("key, match", [
    ("ttl-160m", "'ttl-160m' is not a classifier"), ("reward-pt", "not a classifier"),
    (None, "Unknown model None"), ("../x", "Unknown model '../x'")])
def test_classify_handler_refuses_keys_of_other_tabs(engine, key, match):
    from ui import classification as tab
    with pytest.raises(gr.Error, match=match):
        tab.classify(engine, "Bom", key, "")


def test_chat_handler_refuses_bad_input(engine):
    from ui import chat as tab
    with pytest.raises(gr.Error, match="must be text"):
        list(tab.respond(engine, ["Oi"]))
    with pytest.raises(gr.Error, match="top_k must be a whole number"):
        list(tab.respond(engine, "Oi", top_k=2.5))


# -- the engine directly -----------------------------------------------------

@pytest.mark.parametrize("model", ["ttl", "aira"])
def test_engine_cuts_a_200k_character_prompt_to_the_context(request, model):
    m = request.getfixturevalue(model)
    ids = formats.encode(m.spec.prompt_format, m.tokenizer, {"text": HUGE})
    ids, dropped = generation.fit_context(ids, m.spec.max_input_tokens, 8, keep_first=1)
    assert dropped > 0 and len(ids) == m.spec.max_input_tokens - 8
    assert generation.complete(m, ids, Sampling(max_new_tokens=8, seed=1)) is not None


def test_engine_classifies_a_200k_character_text_within_256_tokens(engine):
    m = engine.load("ttl-160m-imdb")
    assert len(classification.encode_inputs(m, {"text": HUGE})["input_ids"]) == 256
    probs = classification.classify(m, [{"text": HUGE}])[0]
    assert abs(sum(probs.values()) - 1) < 1e-5


@pytest.mark.parametrize("key", ["ttl-160m", "aira-2-124m", "tinyllama-tweet"])
def test_no_typed_special_token_string_becomes_a_special_token(engine, key):
    tok = engine.load(key).tokenizer
    specials = formats._special_ids(tok)
    ids = formats.encode_text(tok, ALL_SPECIALS + " " + ODD_TEXT["emoji"] + ODD_TEXT["rtl"])
    assert not set(ids) & specials
    assert tok.decode(ids).count("<|endofcompletion|>") == 1


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=1.01),
                                 dict(max_new_tokens=10**9), dict(top_k="20"),
                                 dict(repetition_penalty=float("inf")), dict(seed="x")])
def test_engine_refuses_out_of_range_settings(bad):
    with pytest.raises(ValueError):
        Sampling.from_defaults({}, **bad)
