"""Security: models come only from the registry or the operator's
directories, no user input becomes a path or a model id, remote code is
never trusted, `share` is off unless asked, uploads are limited, and no
secret reaches the logs or the page."""

import logging

import gradio as gr
import pytest
import transformers

from inference.engine import Engine
from inference.errors import ModelUnavailable
from inference.settings import Settings
from inference.registry import REGISTRY

from conftest import STANDIN_DIR

HOSTILE = ["../../etc/passwd", "/etc", "~/.ssh", "https://evil.example/model",
           "evil/model", "nicholasKluge/TeenyTinyLlama-160m/../../x", " ttl-160m", "main\n"]


@pytest.fixture
def recorded(monkeypatch):
    """Every from_pretrained call (tokenizer, model classes, adapters):
    where it loads from and with which arguments. Hub loads fail after being
    recorded (no network); directories load as usual."""
    calls = []
    classes = {getattr(transformers, s.model_class) for s in REGISTRY.values()}
    for cls in classes | {transformers.AutoTokenizer}:
        original = cls.from_pretrained

        def fake(where, *args, _original=original, **kwargs):
            calls.append((str(where), kwargs))
            if str(where).startswith(("nicholasKluge/", "TinyLlama/")):
                raise OSError("no network in tests")
            return _original(where, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", fake)
    from peft import PeftModel
    original_peft = PeftModel.from_pretrained

    def fake_peft(model, where, *args, **kwargs):
        calls.append((str(where), kwargs))
        return original_peft(model, where, *args, **kwargs)

    monkeypatch.setattr(PeftModel, "from_pretrained", fake_peft)
    return calls


def test_every_registry_model_loads_without_remote_code(recorded, monkeypatch):
    e = Engine(Settings.from_env({"TTL_TWEET_ADAPTER": "some/adapter"}, strict=True))
    for key in REGISTRY:
        with pytest.raises(ModelUnavailable):
            e.load(key)
    assert {w for w, _ in recorded} == {s.hub_id for s in REGISTRY.values()}
    assert not [kw for _, kw in recorded if kw.get("trust_remote_code")]


def test_stand_ins_and_adapters_load_without_remote_code(recorded):
    e = Engine(Settings(standin=True, standin_dir=str(STANDIN_DIR)))
    for key in ("ttl-160m", "aira-2-124m", "tinyllama-tweet"):
        e.load(key)
    assert any(w.endswith("adapter") for w, _ in recorded)
    assert all(w.startswith(str(STANDIN_DIR)) for w, _ in recorded)
    assert not [kw for _, kw in recorded if kw.get("trust_remote_code")]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_no_user_input_becomes_a_path_or_a_model_id(recorded, hostile):
    from ui import chat, classification, generation
    e = Engine(Settings(strict=True))
    attempts = [
        lambda: list(generation.generate(e, "A lhama", model_key=hostile)),
        lambda: list(generation.generate(e, "A lhama", "ttl-160m", revision=hostile)),
        lambda: classification.classify(e, "Bom", hostile, hostile),
    ]
    for attempt in attempts:
        with pytest.raises(gr.Error):
            attempt()
    assert recorded == []   # refused before anything was loaded
    with pytest.raises(gr.Error):   # a known key and checkpoint: only the registry's id
        list(generation.generate(e, "A lhama", "ttl-460m", revision="step1200000"))
    assert {(w, kw.get("revision")) for w, kw in recorded} == {
        ("nicholasKluge/TeenyTinyLlama-460m", "step1200000")}
    assert chat.KEY in REGISTRY   # the chat tab takes no model choice at all


def test_operator_directories_are_the_only_local_paths(recorded, tmp_path):
    from inference import standins
    good = standins.ensure("ttl-160m-imdb", root=STANDIN_DIR)
    e = Engine(Settings(strict=True, local_dirs={"ttl-160m-imdb": str(good)}))
    e.load("ttl-160m-imdb")
    assert {w for w, _ in recorded} == {str(good)}


@pytest.fixture
def launched(monkeypatch):
    """app.main's launch arguments, without serving."""
    import app
    got = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: got.update(kw))
    for name in ("TTL_STANDIN", "TTL_STRICT", "TTL_LOCAL_DIRS"):
        monkeypatch.delenv(name, raising=False)
    return lambda *argv: (app.main(list(argv)), got)[1]


def test_share_is_off_unless_the_operator_asks(launched):
    assert launched("--standin")["share"] is False
    assert launched("--standin", "--share")["share"] is True


def test_uploads_are_limited_in_size(launched):
    from gradio.utils import _parse_file_size
    limit = launched("--standin").get("max_file_size")
    assert limit is not None and _parse_file_size(limit) <= 10 * 1024 * 1024


def test_no_secret_reaches_the_logs_or_the_banner(monkeypatch, caplog, tmp_path):
    secret = "hf_SECRETtoken0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    e = Engine(Settings(local_dirs={"ttl-160m-imdb": str(tmp_path / "gone")},
                        standin_dir=str(STANDIN_DIR)))
    m = e.load("ttl-160m-imdb")
    assert secret not in caplog.text and secret not in (m.notice or "")
