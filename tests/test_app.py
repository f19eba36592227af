"""The app answers through gradio_client as an API user would drive it."""

import pytest
from gradio_client.exceptions import AppError


def test_named_endpoints(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/chat", "/classify", "/finetune"} <= set(names)
    assert {"/compare", "/timeline", "/blind_match", "/vote", "/leaderboard"} <= set(names)


def test_generate_endpoint_returns_text_and_figures(client):
    text, *others, figures, _, _ = client.predict("A lhama é", api_name="/generate")
    assert text.strip() and others == ["", "", ""] and "prompt tokens" in figures


def test_generate_endpoint_answers_an_empty_prompt_with_a_message(client):
    *texts, figures, _, _ = client.predict("   ", api_name="/generate")
    assert texts == ["", "", "", ""] and "Type a prompt" in figures


def test_chat_endpoint_answers_and_a_seed_reproduces_the_answer(client):
    answer = client.predict("O que é uma lhama?", seed=3, api_name="/chat")
    assert answer.strip() and "<|" not in answer   # Aira's special tokens never reach the text
    assert client.predict("O que é uma lhama?", seed=3, api_name="/chat") == answer


def test_a_seed_reproduces_the_generated_text_call_after_call(client):
    args = dict(temperature=1.0, max_new_tokens=40, seed=1234, api_name="/generate")
    first = client.predict("A PUCRS é uma universidade ", **args)[0]
    assert first and client.predict("A PUCRS é uma universidade ", **args)[0] == first


def test_classify_endpoint_returns_label_probabilities(client):
    result, _ = client.predict("Que filme bom!", "ttl-160m-imdb", "", api_name="/classify")
    assert result["label"] in ("NEGATIVE", "POSITIVE")
    assert abs(sum(c["confidence"] for c in result["confidences"]) - 1) < 1e-4


@pytest.mark.parametrize("args", [("x", "ttl-160m", "main", -1.0),
                                  ("x", "no-such-model")])
def test_bad_input_gets_a_message_and_the_next_request_works(client, args):
    with pytest.raises(AppError):
        client.predict(*args, api_name="/generate")
    text, *_ = client.predict("A lhama", api_name="/generate")
    assert text
