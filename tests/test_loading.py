"""Loading: stand-ins keep the real configs; local directories load through
the same from_pretrained path as the hub; failures become clear messages."""

import shutil
import threading
import time

import pytest
import torch

from inference import standins
from inference.engine import Engine
from inference.errors import ModelUnavailable
from inference.settings import Settings, parse_local_dirs
from conftest import engine_for_tests


def test_standin_has_the_published_config_fields(ttl):
    c = ttl.model.config
    assert type(ttl.model).__name__ == "LlamaForCausalLM"
    assert (c.vocab_size, c.max_position_embeddings, c.bos_token_id, c.eos_token_id,
            c.pad_token_id, c.hidden_act, c.rms_norm_eps, c.tie_word_embeddings) == (
        32000, 2048, 1, 2, 3, "silu", 1e-05, False)
    tok = ttl.tokenizer
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert tok("Olá")["input_ids"][0] == 1   # adds <s> by default


def test_published_use_cache_false_is_turned_on_for_inference(ttl):
    assert ttl.model.config.use_cache is True
    assert ttl.model.generation_config.use_cache is True


def test_aira_standin_special_tokens_have_the_real_ids(aira):
    tok = aira.tokenizer
    assert type(aira.model).__name__ == "GPT2LMHeadModel"
    assert (tok.bos_token_id, tok.eos_token_id, tok.sep_token_id, tok.pad_token_id) == (
        50257, 50258, 50259, 50260)
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 0
    assert aira.model.config.vocab_size == 50261


def test_local_directory_loads_through_from_pretrained(tmp_path, engine):
    path = standins.ensure("ttl-160m-imdb", root=engine.settings.standin_dir)
    local = Engine(Settings(local_dirs={"ttl-160m-imdb": str(path)}))
    m = local.load("ttl-160m-imdb")
    assert not m.is_standin and m.notice is None
    assert m.source.startswith(f"directory {path}")
    assert m.model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}


def test_missing_local_directory_falls_back_with_a_banner(tmp_path, engine):
    e = Engine(Settings(local_dirs={"ttl-160m-imdb": str(tmp_path / "nope")},
                        standin_dir=engine.settings.standin_dir))
    m = e.load("ttl-160m-imdb")
    assert m.is_standin
    assert "does not exist" in m.notice and "--local" in m.notice or "TTL_LOCAL_DIRS" in m.notice


def test_a_model_that_failed_is_tried_again_later_with_growing_waits(tmp_path, engine,
                                                                     monkeypatch):
    """The model's directory appears after the first try (a download that
    finished, a disk mounted late): a later request gets the model itself."""
    where = tmp_path / "imdb"
    e = Engine(Settings(local_dirs={"ttl-160m-imdb": str(where)},
                        standin_dir=engine.settings.standin_dir))
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    first = e.load("ttl-160m-imdb")
    assert first.is_standin and "tried again" in first.notice
    clock[0] += 29
    assert e.load("ttl-160m-imdb") is first   # not yet
    clock[0] += 2
    second = e.load("ttl-160m-imdb")   # tried again, failed again: the next wait is longer
    assert second is not first and second.is_standin
    assert second.retry_at - clock[0] == 60
    shutil.copytree(standins.ensure("ttl-160m-imdb", root=engine.settings.standin_dir), where)
    clock[0] += 61
    third = e.load("ttl-160m-imdb")
    assert not third.is_standin and third.notice is None and third.retry_at is None


def test_strict_mode_reports_instead_of_falling_back(tmp_path):
    e = Engine(Settings(strict=True, local_dirs={"ttl-160m": str(tmp_path)}))
    with pytest.raises(ModelUnavailable, match="holds no loadable model"):
        e.load("ttl-160m")


def test_offline_hub_falls_back_and_says_why(engine):
    # HF_HUB_OFFLINE=1 is set for the whole suite (conftest).
    e = Engine(Settings(standin_dir=engine.settings.standin_dir))
    m = e.load("ttl-160m")
    assert m.is_standin
    assert "cannot be reached" in m.notice and "--local ttl-160m=DIR" in m.notice


def test_missing_adapter_setting_is_named(engine, monkeypatch):
    monkeypatch.delenv("TTL_TWEET_ADAPTER", raising=False)
    e = Engine(Settings(strict=True))
    with pytest.raises(ModelUnavailable, match="TTL_TWEET_ADAPTER"):
        e.load("tinyllama-tweet")


def test_unknown_checkpoint_is_refused(engine):
    with pytest.raises(ModelUnavailable, match="step100000"):
        engine.load("ttl-160m", "../../etc")


def test_two_users_load_a_model_once(engine):
    e = Engine(engine.settings)
    got = []
    threads = [threading.Thread(target=lambda: got.append(e.load("ttl-160m-hatebr")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in got}) == 1


def test_local_dirs_setting_rejects_unknown_keys():
    with pytest.raises(KeyError):
        parse_local_dirs("gpt-5=/tmp")
    assert parse_local_dirs("ttl-160m=/a, aira-2-124m=/b") == {
        "ttl-160m": "/a", "aira-2-124m": "/b"}


def test_cpu_default_dtype_is_float32(engine):
    assert engine.device == torch.device("cpu") and engine.dtype == torch.float32


def test_models_loaded_at_once_by_several_engines_leave_transformers_as_it_was():
    """transformers swaps PreTrainedModel.tie_weights and init_weights while
    it builds a model; builds at once in one process could leave them
    swapped for good, and a tied model (Aira) would then load with its head
    on the meta device. Loads are one at a time in the whole process."""
    import threading

    from transformers import PreTrainedModel

    tie, init = PreTrainedModel.tie_weights, PreTrainedModel.init_weights
    keys = ["aira-2-124m", "ttl-160m", "aira-2-124m", "ttl-160m-imdb"]
    errors = []

    def load(key):
        try:
            engine_for_tests().load(key)
        except Exception as exc:   # reported below, on the test's thread
            errors.append(exc)
    threads = [threading.Thread(target=load, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert PreTrainedModel.tie_weights is tie and PreTrainedModel.init_weights is init
    m = engine_for_tests().load("aira-2-124m")
    assert not [n for n, p in m.model.named_parameters() if p.device.type == "meta"]
