"""The Benchmarks tab: the published tables are in the assets digit for
digit, every figure builds, and 'measured here' measures."""

from __future__ import annotations

import ast
import json
import math
import os
import re
from pathlib import Path

import gradio as gr
import pytest
import torch

from inference import api, generation, measure
from ui import benchmarks
from ui import generation as generation_tab

ASSETS = benchmarks.TABLES
META = json.loads((ASSETS / "tables.json").read_text())["tables"]
# The project's source documents live beside the checkout (shared/seeds).
SHARED_SEEDS = Path(os.environ.get(
    "TTL_SEEDS_DIR", Path(__file__).resolve().parents[2] / "shared" / "seeds"))


# -- a plain reader of the cards' markdown tables ------------------------------
def clean(cell: str) -> str:
    cell = cell.replace("\\|", "|")
    cell = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell)   # [text](url) -> text
    cell = cell.replace("**", "")                           # bold marks the best
    cell = re.sub(r"&[ud]arr;", "", cell)                   # direction arrows
    return re.sub(r"\s+", " ", cell).strip()


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    found, block = [], []
    for line in text.splitlines() + [""]:
        s = line.strip()
        if s.startswith("|") and s.endswith("|") and s.count("|") > 2:
            block.append(s)
            continue
        if len(block) >= 3 and re.fullmatch(r"[\s|:\-]+", block[1]):
            rows = [[clean(c) for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in block]
            found.append((rows[0], rows[2:]))
        block = []
    return found


def seed_text(file: str) -> str:
    return (ASSETS / file).read_text(encoding="utf-8")


# -- the tables ------------------------------------------------------------------
def test_every_table_of_every_card_is_in_the_assets():
    """Each markdown table with numbers in a card maps to one asset."""
    used = {(s["file"], s["table"]) for t in META for s in t["seeds"]}
    for card in sorted((ASSETS / "cards").glob("*.md")):
        for i, (header, rows) in enumerate(markdown_tables(card.read_text(encoding="utf-8"))):
            has_numbers = any(re.search(r"\d\.\d", c) for r in rows for c in r[1:])
            assert has_numbers == ((f"cards/{card.name}", i) in used), (card.name, i, header)


@pytest.mark.parametrize("t", [t for t in META if t["seeds"]], ids=lambda t: t["name"])
def test_every_published_number_is_in_the_asset_under_its_model_and_metric(t):
    asset = benchmarks.read(t["name"]).set_index(t["key"])
    flag = t.get("flag_column")
    for seed in t["seeds"]:
        header, rows = markdown_tables(seed_text(seed["file"]))[seed["table"]]
        assert len(rows) == len(asset)
        for row in rows:
            key = row[0]
            for metric, cell in zip(header[1:], row[1:]):
                value, marked = cell.removesuffix("*"), cell.endswith("*")
                assert asset.at[key, metric] == value, (key, metric, cell)
                if flag:
                    assert (metric in asset.at[key, flag].split(";")) == marked, (key, metric)
                else:
                    assert not marked


def test_the_finetuning_table_is_the_same_in_both_cards():
    (a, b) = [markdown_tables(seed_text(s["file"]))[s["table"]]
              for s in next(t for t in META if t["name"] == "finetuning")["seeds"]]
    assert a == b


def test_the_tweet_adapter_scores_are_those_in_its_card():
    text = seed_text("cards/TinyLlama-tweet-sentiment-LoRA.md")
    after, before = re.search(r"achieved (\d+\.\d+) macro f1-score.*initial model which is (\d+\.\d+)",
                              text).groups()
    df = benchmarks.read("tinyllama-tweet")
    assert list(df["macro-F1"]) == [before, after] == ["0.03", "0.25"]


def test_the_160m_checkpoint_perplexities_are_those_in_the_facts():
    df = benchmarks.read("ttl-160m-perplexity")
    assert list(df["step"]) == ["100000", "200000", "300000", "400000"]
    assert list(df["Perplexity"]) == ["24.52", "20.58", "16.98", "16.41"]
    # The 160m card's table is labelled as the 460m run's, honestly.
    t = next(t for t in META if t["name"] == "ttl-460m-perplexity")
    assert "460m" in t["title"] and "460m run" in t["footnotes"][0]


def test_the_card_copies_are_the_shared_seeds():
    if not SHARED_SEEDS.is_dir():   # a clone without the source documents beside it
        pytest.skip(f"the model cards' source documents are not beside this checkout "
                    f"({SHARED_SEEDS}); set TTL_SEEDS_DIR to compare the copies with them")
    copies = {p.read_bytes() for p in (ASSETS / "cards").glob("*.md")}
    # The .decoded.txt copy where there is one (the others are mis-encoded).
    seeds = [p for p in SHARED_SEEDS.glob("*.txt") if p.name.endswith(".decoded.txt")
             or not (SHARED_SEEDS / f"{p.stem}.decoded.txt").exists()]
    assert {p.read_bytes() for p in seeds} == copies


def test_metadata_describes_every_csv():
    assert {t["name"] for t in META} == {p.stem for p in ASSETS.glob("*.csv")}
    for t in META:
        df = benchmarks.read(t["name"])
        assert t["key"] in df.columns and set(t["directions"]) <= set(df.columns)
        assert set(t["directions"].values()) <= {"higher", "lower"}
        assert set(t["highlight"]) <= set(df[t["key"]])
        assert t["source"]["card"] and t["footnotes"]


def test_published_text_is_kept_as_text():
    assert benchmarks.read("finetuning").set_index("model").at["TTL-160m", "FaQuAD-NLI"] == "90.00"
    assert benchmarks.read("aira-2")["ToxiGen"].tolist() == ["None", "None"]
    shown = benchmarks.as_published("harness-en").set_index("model")
    assert shown.at["Xglm-564M", "HellaSwag"] == "34.64*" and shown.at["Xglm-564M", "ARC"] == "25.56"


# -- the figures -------------------------------------------------------------------
def test_every_figure_builds_with_the_published_numbers():
    figs = benchmarks.all_figures()
    assert len(figs) > 20
    for fig in figs:
        assert fig.data and fig.layout.title.text
        fig.to_dict()   # serializes as Gradio will send it
    ppl = benchmarks.perplexity_figure()
    assert list(ppl.data[0].text) == benchmarks.read("ttl-460m-perplexity")["Perplexity"].tolist()
    assert ppl.data[1].yaxis == "y2"


def test_chart_titles_fit_a_phone_and_the_legend_sits_above_the_plot():
    """Plotly neither wraps a title nor moves a legend on a narrow screen:
    the titles are wrapped to a phone's width, and the legends lie flat
    above the plot instead of taking its width at the right."""
    for fig in benchmarks.all_figures():
        lines = fig.layout.title.text.split("<br>")
        assert all(len(line) <= benchmarks.TITLE_CHARS for line in lines), lines
        assert " ".join(lines).replace(" ", "") == fig.layout.title.text.replace("<br>", "").replace(" ", "")
        assert fig.layout.legend.orientation == "h"
        assert fig.layout.margin.t >= 20 + 22 * len(lines)


def test_sorting_follows_the_metric_direction():
    mse = "Assin2 STS Score Mse"   # lower is better
    _, df = benchmarks.benchmark_metric("notebooks-encoders", mse, "Best first")
    assert df["model"].iloc[0] == "BERTimbau-large"   # 0.359102, the lowest
    fig, df = benchmarks.benchmark_metric("notebooks-decoders", "squad F1", "Best first")
    assert df["squad F1"].tolist()[-2:] == ["-", "-"]   # gaps last
    assert list(fig.data[0].x)[0] == "ptt5-base-portuguese-vocab"
    _, df = benchmarks.benchmark_metric("harness-en", benchmarks.ALL, "Worst first")
    assert df["model"].iloc[0] == "Multilingual GPT"


def test_bad_choices_get_a_message():
    with pytest.raises(gr.Error):
        benchmarks.benchmark_table("no-such-table")
    with pytest.raises(gr.Error):
        benchmarks.benchmark_metric("harness-en", "IMDB", "Best first")
    with pytest.raises(gr.Error):
        benchmarks.benchmark_metric("harness-en", "ARC", "sideways")
    with pytest.raises(gr.Error):
        benchmarks.perplexity_figure(3)


def test_download_is_the_stored_csv():
    path = benchmarks.benchmark_table("harness-pt")[-1]
    assert Path(path).read_bytes() == (ASSETS / "harness-pt.csv").read_bytes()


# -- measured here -------------------------------------------------------------------
def test_perplexity_is_exp_of_the_mean_surprisal_from_the_logits(engine, ttl):
    text = "A lhama é um animal da América do Sul."
    p = api.perplexity(engine, "ttl-160m", text).perplexity
    ids = ttl.tokenizer(text)["input_ids"]
    assert ids[0] == 1 and [t.id for t in p.tokens] == ids[1:]
    assert "".join(t.text for t in p.tokens) == text   # tokens as they read, not raw pieces
    with torch.no_grad():
        loss = ttl.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert math.isclose(p.value, math.exp(loss.item()), rel_tol=1e-4)
    assert all(t.surprise_bits >= 0 for t in p.tokens)


@pytest.mark.parametrize("key", ["ttl-160m", "aira-2-124m"])
def test_decoding_speed_counts_new_tokens_in_the_models_own_format(engine, key):
    speed = measure.decoding_speed(engine.load(key), "A lhama", new_tokens=8)
    assert 0 < speed.new_tokens <= 8 and speed.tokens_per_second >= 0


def test_measure_here_reports_apart_from_published(engine):
    summary, speeds, surprisal = benchmarks.measure_here(engine, "Uma frase em português.",
                                                         "ttl-160m")
    assert "Measured here" in summary and "stand-in" in summary
    assert "TeenyTinyLlama-160m" in speeds["model"].tolist()
    assert len(surprisal) > 1


@pytest.mark.parametrize("text, key", [("   ", "ttl-160m"), (None, "ttl-160m"),
                                       ("texto", "aira-2-124m"), ("texto", None),
                                       ("x" * 30_000, "ttl-160m")])
def test_measure_here_rejects_bad_input(engine, text, key):
    with pytest.raises(gr.Error):
        benchmarks.measure_here(engine, text, key)


def test_measured_speed_of_aira_is_its_answer_to_the_text_in_its_chat_format(engine, monkeypatch):
    aira = engine.load("aira-2-124m")
    prompts, real = {}, generation.stream_tokens

    def seen(m, ids, *args, **kwargs):
        prompts[m.spec.key] = list(ids)
        return real(m, ids, *args, **kwargs)
    monkeypatch.setattr(generation, "stream_tokens", seen)
    _, speeds, _ = benchmarks.measure_here(engine, "O que é uma lhama?", "ttl-160m")
    row = speeds.set_index("model").loc["Aira-2-portuguese-124M"]
    assert int(row["new tokens"]) > 1 and float(row["tokens/s"]) > 0
    tok = aira.tokenizer   # Aira's card: bos + question + sep, then the answer
    ends = tok.convert_ids_to_tokens([prompts["aira-2-124m"][0], prompts["aira-2-124m"][-1]])
    assert ends == [tok.bos_token, tok.sep_token]


def test_measured_surprisal_is_in_bits_with_tokens_as_the_generation_tab_shows_them(engine):
    text = "A lhama é um animal\nda América do Sul."
    _, _, surprisal = benchmarks.measure_here(engine, text, "ttl-160m")
    p = api.perplexity(engine, "ttl-160m", text).perplexity
    assert list(surprisal.columns) == ["token", "surprisal (bits)"]
    cells = surprisal["token"].tolist()
    assert cells == [generation_tab.token_cell(t.text) for t in p.tokens]
    assert "".join(ast.literal_eval(c) for c in cells) == text   # spaces and newline shown
    assert not any("▁" in c for c in cells)   # no raw SentencePiece pieces
    bits = [float(b) for b in surprisal["surprisal (bits)"]]
    assert bits == pytest.approx([-math.log2(t.prob) for t in p.tokens], abs=0.006)


def test_no_table_is_shown_without_its_headers(engine):
    with gr.Blocks() as demo:
        benchmarks.build(engine)
    tables = [b for b in demo.blocks.values() if isinstance(b, gr.Dataframe)]
    assert len(tables) == 5
    for table in tables:
        assert table.value["headers"] != ["1", "2", "3"]
    speeds = next(t for t in tables if t.elem_id == "bench-speeds")
    assert speeds.value == {"headers": benchmarks.SPEED_COLUMNS, "data": [], "metadata": None}
