"""The registry holds what the model cards publish."""

import pytest

from inference.registry import REGISTRY, get_spec


def test_every_served_model_is_declared():
    for key in ("ttl-160m", "ttl-460m", "ttl-160m-imdb", "aira-2-124m", "tinyllama-tweet",
                "reward-pt", "toxiguard-pt"):
        assert key in REGISTRY


def test_generation_defaults_are_the_cards_widget_values():
    d = REGISTRY["ttl-160m"].defaults
    assert (d["repetition_penalty"], d["temperature"], d["top_k"], d["top_p"],
            d["max_new_tokens"]) == (1.2, 0.2, 20, 0.2, 150)
    a = REGISTRY["aira-2-124m"].defaults
    assert (a["repetition_penalty"], a["temperature"], a["top_k"], a["top_p"],
            a["max_new_tokens"]) == (1.2, 0.2, 30, 0.3, 200)


def test_label_maps_of_the_fine_tunes():
    assert REGISTRY["ttl-160m-imdb"].labels == ("NEGATIVE", "POSITIVE")
    assert REGISTRY["ttl-460m-agnews"].labels == ("MUNDO", "ESPORTES", "NEGÓCIOS", "TECNOLOGIA")
    assert REGISTRY["ttl-160m-assin2"].labels == ("UNENTAILED", "ENTAILED")
    assert REGISTRY["tinyllama-tweet"].labels == ("negative", "neutral", "positive")


def test_checkpoints_are_published_revisions():
    assert REGISTRY["ttl-160m"].revisions == ("main", "step100000", "step200000",
                                             "step300000", "step400000")
    assert REGISTRY["ttl-460m"].revisions[-1] == "step1200000"


def test_unknown_key_gives_a_message_listing_the_known_ones():
    with pytest.raises(KeyError, match="Unknown model 'gpt-5'.*ttl-160m"):
        get_spec("gpt-5")
