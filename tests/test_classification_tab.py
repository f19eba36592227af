"""The classification tab's engine and handlers on stand-ins: padded
batches, the fine-tunes' input formats, label scoring for the tweet
adapter, batch mode with bad rows, and micro-batching of single requests."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
import torch

from inference import api, classification, fastpath, sampling, standins
from inference.batching import MicroBatcher
from inference.registry import REGISTRY
from ui import classification as tab


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def imdb(engine):
    return engine.load("ttl-160m-imdb")


@pytest.fixture(scope="module")
def tweet(engine):
    return engine.load("tinyllama-tweet")


def test_padded_batch_matches_the_softmax_of_each_text_alone(imdb):
    texts = ["Bom.", "Um filme longo, lento e sem graça, que não recomendo a ninguém."]
    got = classification.classify(imdb, [{"text": t} for t in texts])
    for text, probs in zip(texts, got):
        assert abs(sum(probs.values()) - 1) < 1e-6
        ids = torch.tensor([imdb.tokenizer(text)["input_ids"]])   # the card: tokenizer(text)
        with torch.no_grad():
            want = torch.softmax(imdb.model(ids).logits[0].float(), -1)
        assert torch.allclose(torch.tensor([probs[l] for l in imdb.spec.labels]), want, atol=1e-5)


# Each fine-tune's input as its card's training code builds it: one string
# through the tokenizer (which adds <s> in front).
CARD_STRINGS = {
    "ttl-160m-agnews": (dict(title="Brasil vence", text="O jogo foi ontem."),
                        lambda t, f: f["title"] + "\n\n" + f["text"]),
    "ttl-460m-faquad-nli": (dict(question="Qual é a capital?", answer="Brasília."),
                            lambda t, f: f["question"] + t.bos_token + f["answer"] + t.eos_token),
    "ttl-160m-assin2": (dict(premise="Um homem canta.", hypothesis="Alguém canta."),
                        lambda t, f: t.bos_token + f["premise"] + t.bos_token
                        + f["hypothesis"] + t.eos_token),
}


@pytest.mark.parametrize("key", CARD_STRINGS)
def test_each_task_encodes_as_its_card(ttl, key):
    # All TeenyTinyLlama fine-tunes share the base model's tokenizer.
    m = dataclasses.replace(ttl, spec=REGISTRY[key])
    fields, card = CARD_STRINGS[key]
    tok = m.tokenizer
    ids = classification.encode_inputs(m, fields)["input_ids"]
    assert ids == tok(card(tok, fields))["input_ids"]
    assert ids[0] == tok.bos_token_id
    if key.endswith("assin2"):   # the tokenizer's <s>, then the card's own
        assert ids[:2] == [tok.bos_token_id] * 2 and ids.count(tok.bos_token_id) == 3
    if key.endswith("faquad-nli"):
        assert ids.count(tok.bos_token_id) == 2 and ids[-1] == tok.eos_token_id


def sequence_logprob(model, ids: list[int]) -> float:
    """Log-likelihood of a whole sequence, one unpadded forward pass."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits[0].float(), -1)
    return float(sum(logp[p - 1, ids[p]] for p in range(1, len(ids))))


def test_label_scoring_matches_direct_log_likelihoods(tweet):
    from inference import formats
    from inference.registry import TWEET_SYSTEM_PROMPT
    text = "The bus was late again and I missed my exam."
    probs = classification.score_labels(tweet, text)
    assert list(probs) == ["negative", "neutral", "positive"]
    assert max(probs, key=probs.get) in probs and abs(sum(probs.values()) - 1) < 1e-6
    # The prompt is the same for every label, so a softmax over whole-sequence
    # log-likelihoods equals the softmax over the label words' log-likelihoods.
    full = [sequence_logprob(tweet.model, formats.encode(
        "zephyr-chat", tweet.tokenizer,
        {"system": TWEET_SYSTEM_PROMPT, "text": text, "answer": label}))
        for label in tweet.spec.labels]
    want = torch.softmax(torch.tensor(full), 0)
    assert torch.allclose(torch.tensor(list(probs.values())), want, atol=1e-4)


def test_labels_read_after_the_prompt_once_score_as_whole_rows_do(tweet):
    """The local backend reads the shared prompt once and each label after
    it; a server (the remote backend) gets whole rows. Both give each label
    token the same log-probability."""
    from types import SimpleNamespace
    from inference.backends import Backend
    from inference.remote import Remote
    prefix = tweet.tokenizer("Tweet: the bus was late again. Sentiment:")["input_ids"]
    labels = [tweet.tokenizer(f" {w}", add_special_tokens=False)["input_ids"]
              for w in ("negative", "neutral", "positive and more")]
    once = tweet.backend.continuation_logprobs(tweet, prefix, labels)
    server = SimpleNamespace(prompt_logprobs=lambda m, rows, top: Backend.prompt_logprobs(
        tweet.backend, m, rows, top))   # the rows scored as the server would: whole
    whole = Remote.continuation_logprobs(server, tweet, prefix, labels)
    assert [len(r) for r in once] == [len(l) for l in labels] == [len(r) for r in whole]
    for a, b in zip(once, whole):
        assert a == pytest.approx(b, abs=1e-4)


def test_a_text_longer_than_the_context_is_scored_on_its_end(tweet):
    long = "O ônibus atrasou de novo. " * 400   # ~3,000 tokens: over TinyLlama's 2,048
    probs = classification.score_labels(tweet, long)
    assert list(probs) == list(tweet.spec.labels) and abs(sum(probs.values()) - 1) < 1e-6
    assert probs == pytest.approx(classification.score_labels(tweet, "Oi. " + long))   # the start is cut


def test_the_adapter_changes_the_scores(engine, tweet):
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    where = standins.ensure("tinyllama-tweet", engine.settings.full_size_standins,
                            Path(engine.settings.standin_dir))
    base = LlamaForCausalLM.from_pretrained(where).eval()
    text = "I love this!"
    without = classification.label_logprobs(dataclasses.replace(tweet, model=base), text)
    with_adapter = classification.label_logprobs(tweet, text)
    assert max(abs(without[l] - with_adapter[l]) for l in without) > 1e-3
    # ... and the served model is exactly base + that adapter (merged, then
    # through the same CPU fast path as the engine).
    merged = PeftModel.from_pretrained(base, str(where / "adapter")).merge_and_unload().eval()
    served, _ = fastpath.apply(merged, tweet.device, tweet.fast)
    again = classification.label_logprobs(dataclasses.replace(tweet, model=served), text)
    assert all(abs(again[l] - with_adapter[l]) < 1e-3 for l in again)


def test_free_generation_answer_is_the_greedy_continuation_of_the_chat_prompt(engine, tweet):
    from inference import formats, generation
    from inference.registry import TWEET_SYSTEM_PROMPT
    ids = formats.encode("zephyr-chat", tweet.tokenizer,
                         {"system": TWEET_SYSTEM_PROMPT, "text": "Great game tonight!"})
    s = sampling.Sampling(do_sample=False, max_new_tokens=8, repetition_penalty=1.0)
    expected = generation.complete(tweet, ids, s).strip()
    assert expected and api.free_answer(engine, "tinyllama-tweet", "Great game tonight!") == expected


def batch_of(engine, *args):
    """The batch handler's final outputs (it yields nothing else while a
    batch this small runs)."""
    return list(tab.classify_batch(engine, *args, progress=no_progress))[-1]


def test_a_batch_with_bad_rows_completes(engine, tmp_path):
    csv = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["Adorei o filme.", "", "x" * 20_001, "Péssimo."]}).to_csv(
        csv, index=False)
    df, counts, download, _ = batch_of(engine, str(csv), "", "ttl-160m-imdb")
    assert list(df.row) == [1, 2, 3, 4]
    assert df.error[1] == "empty text" and "too long" in df.error[2]
    good = df[df.error == ""]
    assert len(good) == 2 and set(good.label) <= {"NEGATIVE", "POSITIVE"}
    assert ((good.NEGATIVE + good.POSITIVE) - 1).abs().max() < 1e-3
    assert counts.rows.sum() == 2
    saved = pd.read_csv(download.value["path"] if isinstance(download.value, dict)
                        else download.value, keep_default_na=False)
    assert len(saved) == 4 and list(saved.label[[0, 3]]) == list(good.label)


def test_a_batch_pads_each_chunk_to_rows_of_its_own_length(imdb, monkeypatch):
    """Rows of mixed lengths: each chunk holds rows of similar length (so
    short rows are not padded to a long one's length), and every row's
    result, in the file's order, is what it gets alone."""
    texts = [("Ótimo. " if i % 2 else "Um filme longo, lento e sem graça. " * 6) + str(i)
             for i in range(2 * classification.BATCH_CHUNK)]
    widths = []
    run = imdb.backend.classify
    monkeypatch.setattr(imdb.backend, "classify", lambda m, rows: widths.append(
        [len(r["input_ids"]) for r in rows]) or run(m, rows))
    got = classification.classify_rows(imdb, [{"text": t} for t in texts])
    short, long = widths   # in the file they alternate
    assert len(short) == len(long) == classification.BATCH_CHUNK and max(short) < min(long)
    alone = [classification.classify(imdb, [{"text": t}])[0] for t in texts]
    for g, a in zip(got, alone):
        assert g == pytest.approx(a, abs=1e-5)


def test_switching_the_classifier_empties_the_batch_results(engine):
    df, counts, download, _ = batch_of(engine, None, "Adorei.\nPéssimo.", "ttl-160m-imdb")
    assert list(df.columns) == ["row", "text", "label", "NEGATIVE", "POSITIVE", "error"]
    assert len(df) == 2 and counts.rows.sum() == 2 and download.visible
    table, chart, download = tab.no_results(engine, "ttl-160m-agnews")
    assert table.empty and list(table.columns) == [
        "row", "title", "text", "label", "MUNDO", "ESPORTES", "NEGÓCIOS", "TECNOLOGIA", "error"]
    assert chart.empty and download.value is None and not download.visible


def test_the_results_table_shows_the_classifiers_columns_before_any_batch(engine):
    with gr.Blocks() as demo:
        tab.build(engine)
    results = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataframe)
                   and b.label == "Results")
    assert results.value["headers"] == ["row", "text", "label", "NEGATIVE", "POSITIVE", "error"]
    assert results.value["data"] == []


def test_pasted_lines_and_upload_limits(engine, tmp_path):
    spec = REGISTRY["ttl-160m-assin2"]
    rows = tab.read_rows(spec, None, "Um gato dorme.\tUm animal dorme.\nsem tab\n\n")
    assert rows == [{"premise": "Um gato dorme.", "hypothesis": "Um animal dorme."},
                    {"premise": "sem tab"}]
    assert classification.row_error(dataclasses.replace(
        engine.load("ttl-160m"), spec=spec), rows[1]) == "empty hypothesis"
    bad = tmp_path / "x.exe"
    bad.write_text("a")
    big = tmp_path / "big.csv"
    big.write_text("text\n" + "a" * (tab.MAX_UPLOAD_BYTES + 1))
    for file, lines, message in ((str(bad), "", "Upload a .csv or .txt file"),
                                 (str(big), "", "bytes; the limit is"),
                                 (None, "   ", "Upload a CSV or paste one text per line"),
                                 (None, "a\n" * (tab.MAX_BATCH_ROWS + 1), "rows; the limit is")):
        with pytest.raises(gr.Error, match=message):
            tab.read_rows(spec, file, lines)


@pytest.mark.parametrize("args, message", [
    (("", "ttl-160m-imdb", ""), "Please type some text first"),
    (("x", "ttl-160m", ""), "'ttl-160m' is not a classifier"),
    (("x", "no-such", ""), "Unknown model 'no-such'"),
    (("x", "ttl-160m-assin2", " "), "Please type some hypothesis first"),
    ((123, "ttl-160m-imdb", ""), "The text must be text")])
def test_bad_single_input_gets_a_message(engine, args, message):
    with pytest.raises(gr.Error, match=message):
        tab.classify(engine, *args, progress=None)


def test_concurrent_requests_run_as_one_batch(imdb):
    texts = ["Ótimo!", "Um filme bem ruim, chato e longo demais.", "Gostei.", "Não gostei."]
    alone = [classification.classify(imdb, [{"text": t}])[0] for t in texts]
    b = classification.batcher(imdb)
    b.sizes.clear()   # a log of the last 1,000 batches
    results = [None] * len(texts)

    def ask(i):
        results[i] = classification.classify_one(imdb, {"text": texts[i]})

    with b.busy:   # hold the batcher until every request is waiting
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        while b.pending < len(texts):
            threading.Event().wait(0.001)
    for t in threads:
        t.join(timeout=30)
    assert list(b.sizes) == [len(texts)]
    for got, want in zip(results, alone):
        assert all(abs(got[l] - want[l]) < 1e-5 for l in want)


def test_a_failing_batch_fails_every_request_and_the_next_one_runs():
    calls = []

    def run(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("boom")
        return [i.upper() for i in items]

    b = MicroBatcher(run, wait_s=0.001)
    with pytest.raises(ValueError):
        b.submit("bad")
    assert b.submit("ok") == "OK"


def test_classify_api_takes_a_pair_and_a_classifier_key(client):
    result, _ = client.predict("Um homem canta.", "ttl-160m-faquad-nli", "Alguém canta.",
                               api_name="/classify")
    assert result["label"] in ("UNSUITABLE", "SUITABLE")
    assert abs(sum(c["confidence"] for c in result["confidences"]) - 1) < 1e-4


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"])
def test_csvs_in_the_encodings_excel_exports_are_read(tmp_path, encoding):
    csv = tmp_path / "rows.csv"
    csv.write_bytes("text\nAção e emoção: ótimo filme!\nPéssimo.\n".encode(encoding))
    rows = tab.read_rows(REGISTRY["ttl-160m-imdb"], str(csv), "")
    assert rows == [{"text": "Ação e emoção: ótimo filme!"}, {"text": "Péssimo."}]


def test_results_csv_cells_cannot_run_as_formulas(engine, tmp_path):
    texts = ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "Bom filme"]
    _, _, download, _ = batch_of(engine, None, "\n".join(texts), "ttl-160m-imdb")
    path = download.value["path"] if isinstance(download.value, dict) else download.value
    saved = pd.read_csv(path, keep_default_na=False, dtype=str)
    assert list(saved.text) == ["'" + t for t in texts[:4]] + ["Bom filme"]


def test_pasted_lines_over_the_limit_are_refused_before_any_work(engine):
    with pytest.raises(gr.Error, match="characters; the limit is"):
        tab.read_rows(REGISTRY["ttl-160m-imdb"], None, "x" * (tab.MAX_UPLOAD_BYTES + 1))
