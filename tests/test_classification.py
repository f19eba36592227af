"""Classification: probabilities are a softmax of the model's logits."""

import torch

from inference import classification, formats


def test_probabilities_sum_to_one_and_match_the_logits(engine):
    m = engine.load("ttl-160m-imdb")
    texts = ["Que filme lindo!", "Horrível, não recomendo a ninguém mesmo."]
    got = classification.classify(m, [{"text": t} for t in texts])
    for text, probs in zip(texts, got):
        assert set(probs) == {"NEGATIVE", "POSITIVE"}
        assert abs(sum(probs.values()) - 1) < 1e-6
        ids = torch.tensor([formats.encode("plain", m.tokenizer, {"text": text})])
        with torch.no_grad():
            want = torch.softmax(m.model(ids).logits[0].float(), -1)
        assert torch.allclose(torch.tensor(list(probs.values())), want, atol=1e-5)


def test_tweet_label_scoring_returns_a_distribution_over_three_labels(engine):
    m = engine.load("tinyllama-tweet")
    probs = classification.score_labels(m, "What a great day!")
    assert list(probs) == ["negative", "neutral", "positive"]
    assert abs(sum(probs.values()) - 1) < 1e-6


def test_the_tweet_models_free_answer_takes_a_text_longer_than_its_context(engine):
    from inference.api import free_answer
    m = engine.load("tinyllama-tweet")
    text = "Que dia lindo! " * 1300   # ~7k tokens, context 2048
    answer = free_answer(engine, "tinyllama-tweet", text)
    assert len(m.tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 8
    assert free_answer(engine, "tinyllama-tweet", text) == answer   # greedy: the same words
