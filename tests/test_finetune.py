"""Fine-tuning on stand-ins: a separable toy table is learned, the model is
served as custom/<name> after a restart too, its zip is a loadable
save_pretrained folder; Stop keeps what was trained; one job at a time;
every bad file and setting gets a message."""

from __future__ import annotations

import threading
import zipfile

import gradio as gr
import pytest
import torch

from conftest import engine_for_tests, wait_until
from inference import api, finetune
from inference.errors import EngineError
from inference.registry import CLASSIFY
from ui import classification as classification_tab
from ui import finetune as tab

from toydata import toy_tsv

# What learns the toy table reliably on the tiny stand-in in a few seconds.
TOY = dict(epochs=10, learning_rate=5e-3, max_length=64)


def run(engine, name: str, table=None, **settings) -> finetune.Done:
    events = list(api.finetune_run(engine, table or finetune.read_table(toy_tsv().encode(), "t.tsv"),
                                   name, **{**TOY, **settings}))
    assert isinstance(events[-1], finetune.Done)
    return events[-1]


@pytest.fixture(scope="module")
def trained(engine):
    return run(engine, "toy")


def test_a_separable_toy_table_reaches_90_percent_held_out_accuracy(trained):
    m = trained.metrics
    assert m.accuracy >= 0.9 and m.macro_f1 >= 0.9
    assert m.labels == ("bom", "ruim")
    assert sum(map(sum, m.confusion)) == trained.meta["held_out_rows"] == 48   # 20 % of 240
    assert not trained.stopped and trained.meta["steps"] == trained.meta["total_steps"]
    # The live plot had its loss and its held-out points.
    assert len(trained.progress.losses) >= 10 and len(trained.progress.evals) >= 2


def test_the_trained_model_classifies_as_custom_name(engine, trained):
    assert trained.key == "custom/toy"
    good = api.classify(engine, "custom/toy", {"text": "O show foi incrível, de verdade."})
    bad = api.classify(engine, "custom/toy", {"text": "A aula foi péssimo, hoje."})
    assert max(good.probs, key=good.probs.get) == "bom"
    assert max(bad.probs, key=bad.probs.get) == "ruim"
    assert "fine-tuned from a stand-in" in good.notice   # its base was the stand-in
    # The Classification tab lists it, and its handler answers.
    assert ("toy (fine-tuned TeenyTinyLlama-160m)", "custom/toy") in classification_tab.models(engine)
    probs, _ = classification_tab.classify(engine, "O jogo foi lindo, ontem.", "custom/toy", "")
    assert set(probs) == {"bom", "ruim"}


def test_the_http_api_lists_and_serves_the_custom_model(app_url, engine, trained):
    import httpx
    ids = [m["id"] for m in httpx.get(app_url + "v1/models").json()["data"]]
    assert "custom/toy" in ids and "ttl-160m-imdb" in ids
    text = "O show foi incrível, de verdade."
    r = httpx.post(app_url + "classify", json={"model": "custom/toy", "input": [text]})
    assert r.status_code == 200, r.text
    [row] = r.json()["data"]
    want = api.classify(engine, "custom/toy", {"text": text}).probs
    assert row["label"] == max(want, key=want.get)
    gone = httpx.post(app_url + "classify", json={"model": "custom/nope", "input": [text]})
    assert gone.status_code == 404 and "GET /v1/models" in gone.json()["error"]["message"]


def test_the_model_survives_a_restart(engine, trained):
    again = engine_for_tests()   # a new engine over the same data directory
    assert "custom/toy" in [s.key for s in api.models(again, CLASSIFY)]
    probs = api.classify(again, "custom/toy", {"text": "O filme foi excelente, hoje."}).probs
    assert max(probs, key=probs.get) == "bom"
    m = again.load("custom/toy")
    assert m.fast == "int8" and m.spec.max_input_tokens == 64   # the int8 road, its max length


def test_the_zip_is_a_loadable_save_pretrained_folder(engine, trained, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path = tab.zipped(trained)
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp_path)
    folder = tmp_path / "toy"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.id2label == {0: "bom", 1: "ruim"}
    text = "O livro foi maravilhoso, sem dúvida."
    with torch.no_grad():
        want = torch.softmax(model(**tok(text, return_tensors="pt")).logits[0], -1)
    served = api.classify(engine, "custom/toy", {"text": text}).probs   # int8: within 0.02
    assert abs(served["bom"] - float(want[0])) < 0.02


def test_stop_keeps_what_was_trained_and_a_second_job_waits_its_turn(engine):
    big = finetune.read_table(toy_tsv(2000).encode(), "big.tsv")   # 100 steps an epoch
    first, second = [], []

    def job(out, name, run_id):
        for event in api.finetune_run(engine, big, name, run_id=run_id, **{**TOY, "epochs": 20}):
            out.append(event)
    a = threading.Thread(target=job, args=(first, "stopped", "run-a"))
    a.start()
    assert wait_until(lambda: first and first[-1].step >= 3, 60)
    b = threading.Thread(target=job, args=(second, "second", "run-b"))
    b.start()
    assert wait_until(lambda: any("one at a time" in e.message for e in second), 10)
    assert api.stop_finetune(engine, "run-a")
    a.join(60)
    done = first[-1]
    assert isinstance(done, finetune.Done) and done.stopped
    assert 3 <= done.meta["steps"] < done.meta["total_steps"] == 2000
    assert "Stopped at step" in done.progress.message
    assert api.classify(engine, "custom/stopped", {"text": "O jogo foi chato, ontem."}).probs
    # The second job started once the first ended; stopped too.
    assert wait_until(lambda: any(getattr(e, "step", 0) >= 1 for e in second), 60)
    api.stop_finetune(engine, "run-b")
    b.join(60)
    assert isinstance(second[-1], finetune.Done)


def test_stopped_before_the_first_step_saves_nothing(engine):
    stop = threading.Event()
    stop.set()
    events = list(api.finetune_run(engine, finetune.read_table(toy_tsv().encode(), "t.tsv"),
                                   "never", cancel=stop, **TOY))
    assert events[-1].key is None and "nothing was saved" in events[-1].progress.message
    with pytest.raises(EngineError, match="Unknown model 'custom/never'"):
        api.classify(engine, "custom/never", {"text": "Bom"})


def test_a_taken_name_is_refused_unless_replacing_is_asked(engine, trained):
    with pytest.raises(EngineError, match="custom/toy exists already"):
        next(api.finetune_run(engine, finetune.read_table(toy_tsv().encode(), "t.tsv"), "toy"))


def test_metrics_are_accuracy_macro_f1_and_the_confusion_matrix():
    m = finetune.score(("a", "b", "c"), [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.accuracy == pytest.approx(4 / 6)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert m.macro_f1 == pytest.approx(sum(f1) / 3)


def test_the_held_out_share_takes_every_label(engine):
    table = finetune.read_table(toy_tsv(40).encode(), "t.tsv")
    train, held = finetune.split(table, 0.1)
    assert sorted(train + held) == list(range(40))
    assert {table.rows[i][1] for i in held} == {"bom", "ruim"}


def test_a_csv_with_a_second_text_trains_a_pair_classifier(engine):
    lines = ["premissa,hipótese,label"] + [
        f"O menino {v}.,Alguém {v}.,sim" if i % 2 else f"O menino {v}.,Ninguém {v}.,não"
        for i, v in enumerate(["corre", "canta", "lê", "pula", "dança"] * 6)]
    table = finetune.read_table("\n".join(lines).encode(), "pairs.csv")
    assert table.fields == ("text", "text_b") and table.labels == ("não", "sim")
    done = run(engine, "pairs", table, epochs=1)
    spec = engine.spec("custom/pairs")
    assert spec.inputs == ("text", "text_b") and spec.prompt_format == "text-pair"
    probs = api.classify(engine, "custom/pairs", {"text": "O menino corre.",
                                                  "text_b": "Alguém corre."}).probs
    assert set(probs) == {"não", "sim"} and done.key == "custom/pairs"


# -- bad files and settings --------------------------------------------------------
GOOD = toy_tsv(40)


@pytest.mark.parametrize("data, name, match", [
    ("text\tlabel\n".encode("utf-16"), "t.tsv", "not UTF-8"),
    (b"", "t.tsv", "The file is empty"),
    (b"\n \n", "t.csv", "The file is empty"),
    (GOOD.replace("\truim", "\tbom").encode(), "t.tsv", "1 label"),
    (GOOD.replace("\t", "\tx\ty\t").encode(), "t.tsv", "4 column"),
    ("text\n".encode() + b"a\n" * 30, "t.tsv", "1 column"),
    (toy_tsv(10).encode(), "t.tsv", "10 rows; fine-tuning takes 20 to 20,000"),
    (("text\tlabel\n" + "Bom.\tx\n" * 20_001).encode(), "t.tsv", "20,001 rows"),
    ((GOOD + "Um texto.\tsozinho\n").encode(), "t.tsv", "'sozinho'.*single row"),
    ((GOOD + "\truim\n").encode(), "t.tsv", "Line 42 has an empty text"),
    ((GOOD + "Um texto.\t\n").encode(), "t.tsv", "Line 42 has an empty label"),
    ((GOOD + "a\tb\tc\n").encode(), "t.tsv", "Line 42 has 3 column"),
    ((GOOD + "x" * 20_001 + "\tbom\n").encode(), "t.tsv", "20,001 characters"),
    (("text\tlabel\n" + "".join(f"t{i}.\tl{i % 21}\n" for i in range(42))).encode(),
     "t.tsv", "21 label"),
    (b"x" * 5_000_001, "t.tsv", "5,000,001 bytes; the limit is 5,000,000"),
])
def test_bad_files_get_a_clear_message(data, name, match):
    with pytest.raises(EngineError, match=match):
        finetune.read_table(data, name)


def test_a_csv_and_a_tsv_are_told_apart():
    quoted = "".join(f'"{t}",{l}\n' for t, l in (line.split("\t") for line in GOOD.splitlines()))
    csv = finetune.read_table(quoted.encode(), "data.csv")
    tsv = finetune.read_table(GOOD.encode(), "data.txt")   # no telling name: the first line
    assert csv.rows == tsv.rows and len(tsv.rows) == 40


@pytest.mark.parametrize("settings, match", [
    (dict(name="../escape"), "is not allowed"),
    (dict(name="a/b"), "is not allowed"),
    (dict(name=""), "is not allowed"),
    (dict(name="x" * 49), "is not allowed"),
    (dict(name=["toy"]), "is not allowed"),
    (dict(base="aira-2-124m"), "base model must be one of ttl-160m, ttl-460m"),
    (dict(method="qlora"), "method must be one of lora, full"),
    (dict(epochs=0), "Epochs must be a whole number from 1 to 20; got 0"),
    (dict(epochs=2.5), "Epochs must be a whole number"),
    (dict(learning_rate=float("nan")), "learning rate must be a number"),
    (dict(learning_rate=1.0), "learning rate must be a number from 1e-06 to 0.01"),
    (dict(max_length=1024), "maximum length must be a whole number from 16 to 512"),
    (dict(eval_share=0.9), "evaluation share must be a number from 0.05 to 0.5"),
    (dict(eval_share="0.2"), "evaluation share must be a number"),
])
def test_bad_settings_get_a_clear_message(engine, settings, match):
    args = dict(name="fine", base="ttl-160m", method="lora", epochs=1, learning_rate=1e-3,
                max_length=64, eval_share=0.2)
    table = finetune.read_table(GOOD.encode(), "t.tsv")
    with pytest.raises(EngineError, match=match):
        next(api.finetune_run(engine, table, **{**args, **settings}))


def test_the_tab_refuses_a_missing_file_with_a_message(engine):
    with pytest.raises(gr.Error, match="Upload a TSV or CSV file first"):
        list(tab.finetune(engine, None, "x"))


def test_the_preview_shows_rows_and_label_counts(tmp_path):
    path = tmp_path / "toy.tsv"
    path.write_text(toy_tsv(), encoding="utf-8")
    head, counts, about = tab.preview(str(path))
    assert len(head) == tab.PREVIEW_ROWS and list(head.columns) == ["text", "label"]
    assert dict(zip(counts.label, counts.rows)) == {"bom": 120, "ruim": 120}
    assert "240 rows, 2 labels" in about.value
