"""Benchmarks tab: every published table of the served models, exact, next
to charts for slides; and a measurement made here, kept apart.

The tables live in assets/benchmarks/*.csv, described (source, metric
directions, footnotes, highlighted models) by assets/benchmarks/tables.json.
They are read as text so that every number shows exactly as published
("90.00", "-", "None"); only the charts turn them into floats.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import textwrap
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from inference import api
from inference.registry import GENERATE, REGISTRY, by_task

from . import common
from .generation import token_cell

TABLES = common.ASSETS / "benchmarks"
META = {t["name"]: t for t in json.loads((TABLES / "tables.json").read_text())["tables"]}
COMPARISONS = [(t["title"], name) for name, t in META.items() if t["key"] == "model"]
ALL = "All metrics (grouped)"
# Every table's metrics, for the API's schema: a client sees the page as
# first built, so the metric input declares them all and the handler
# refuses a metric the table lacks, naming the table's. The page narrows
# the list to the chosen table's.
EVERY_METRIC = [ALL] + list(dict.fromkeys(m for _, name in COMPARISONS
                                           for m in META[name]["directions"]))
ORDERS = ("As published", "Best first", "Worst first")
SECOND_AXIS = ("Energy (kWh)", "Emissions (kg CO2eq)", "None")
PPL_MODELS = [(s.title, s.key) for s in by_task(GENERATE)]
OWN_COLOUR, OTHER_COLOUR = "#d9480f", "#adb5bd"
# The measured tables' columns, shown before the first measurement too;
# tokens/s beside the model, so that it stays in view on a narrow screen.
SPEED_COLUMNS = ["model", "tokens/s", "new tokens", "seconds", "revision", "device"]
SURPRISAL_COLUMNS = ["token", "surprisal (bits)"]
LAYOUT = dict(template="plotly_white", height=440, margin=dict(l=60, r=30, t=60, b=60),
              font=dict(size=14))
# Plotly does not wrap titles: one line of a chart's title holds this many
# characters on a 390-px phone.
TITLE_CHARS = 36


def laid_out(fig: go.Figure, title: str, **layout) -> go.Figure:
    """Every chart's layout. The title is wrapped by hand and the legend laid
    flat under it, so that on a phone neither is cut off nor takes the plot's
    width; the axes make room for their own labels."""
    lines = textwrap.wrap(title, TITLE_CHARS)
    height, top = layout.pop("height", LAYOUT["height"]), 20 + 22 * len(lines)
    fig.update_layout(**LAYOUT)
    fig.update_layout(
        height=height, margin=dict(t=top + 10),
        title=dict(text="<br>".join(lines), font=dict(size=16), x=0.02, xanchor="left",
                   yref="container", y=1 - 14 / height, yanchor="top"),
        legend=dict(orientation="h", x=0, xanchor="left",
                    yref="container", y=1 - (top + 4) / height, yanchor="top"),
        **layout)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


# -- the tables ---------------------------------------------------------------
def read(name: str) -> pd.DataFrame:
    return pd.read_csv(TABLES / f"{name}.csv", dtype=str, keep_default_na=False)


def metrics(name: str) -> list[str]:
    return list(META[name]["directions"])


def number(text: str) -> float:
    """A published cell as a float for plotting; '-' and 'None' are gaps."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def as_published(name: str) -> pd.DataFrame:
    """The table as the source prints it: Open LLM Leaderboard values get
    their '*' back (the CSV keeps the mark in a column of its own)."""
    t, df = META[name], read(name)
    flag = t.get("flag_column")
    if flag:
        for i, marked in df.pop(flag).items():
            for col in filter(None, marked.split(";")):
                df.at[i, col] += t["flag_mark"]
    return df


def sort_key(name: str, metric: str) -> str:
    """What 'all metrics' sorts on: the average where the table has one."""
    if metric != ALL:
        return metric
    return "Average" if "Average" in metrics(name) else metrics(name)[0]


def ordered(name: str, df: pd.DataFrame, metric: str, order: str) -> pd.DataFrame:
    """Rows as published, or best/worst first on `metric` (its direction
    from tables.json); gaps go last."""
    if order not in ORDERS:
        raise common.refused(f"Order must be one of {', '.join(ORDERS)}.")
    if order == ORDERS[0]:
        return df
    best_first = (META[name]["directions"][metric] == "higher") == (order == ORDERS[1])
    keys = df[metric].map(number)
    return df.loc[keys.sort_values(ascending=not best_first, na_position="last").index]


def describe(name: str) -> str:
    t = META[name]
    src = t["source"]
    link = f"[{src['card']}]({src['url']})" if src["url"] else src["card"]
    arrows = " · ".join(f"{m} {'↑' if d == 'higher' else '↓'}" for m, d in t["directions"].items())
    notes = "".join(f"\n- {n}" for n in t["footnotes"])
    return f"**{t['title']}** — source: {link}\n\n{arrows}{notes}"


def download_path(name: str) -> str:
    """The CSV as it is stored, copied where Gradio may serve it from
    (the app may be started from any directory)."""
    out = Path(tempfile.gettempdir()) / "ttl-playground-benchmarks"
    out.mkdir(exist_ok=True)
    return shutil.copy(TABLES / f"{name}.csv", out / f"{name}.csv")


# -- the figures --------------------------------------------------------------
def tokens(text: str) -> float:
    """'8.1M' / '9.8B' processed tokens as a number, for the x axis."""
    return float(text[:-1]) * {"M": 1e6, "B": 1e9}[text[-1]]


def perplexity_figure(second: str = SECOND_AXIS[0]) -> go.Figure:
    """The published TeenyTinyLlama-460m training curve: perplexity against
    processed tokens, with energy or emissions on a second axis (a plot).

    Args:
        second: "Energy (kWh)", "Emissions (kg CO2eq)" or "None".
    """
    if second not in SECOND_AXIS:
        raise common.refused(f"Second axis must be one of {', '.join(SECOND_AXIS)}.")
    df = read("ttl-460m-perplexity")
    x = df["Processed Tokens"].map(tokens)
    fig = go.Figure()
    fig.add_scatter(x=x, y=df["Perplexity"].map(number), name="Perplexity ↓", mode="lines+markers",
                    text=df["Perplexity"], customdata=df["Processed Tokens"],
                    hovertemplate="%{customdata} tokens: perplexity %{text}<extra></extra>",
                    line=dict(color=OWN_COLOUR, width=3))
    column = {SECOND_AXIS[0]: "Energy Consumption (kWh)",
              SECOND_AXIS[1]: "Emissions (KgCO2eq)"}.get(second)
    if column:
        fig.add_scatter(x=x, y=df[column].map(number), name=second, yaxis="y2",
                        mode="lines+markers", text=df[column], customdata=df["Processed Tokens"],
                        hovertemplate=f"%{{customdata}} tokens: %{{text}} {second}<extra></extra>",
                        line=dict(color="#1971c2", dash="dot"))
        fig.update_layout(yaxis2=dict(title=second, overlaying="y", side="right", showgrid=False))
    return laid_out(fig, "TeenyTinyLlama-460m: perplexity by processed tokens",
                    xaxis=dict(title="processed tokens", tickvals=list(x),
                               ticktext=list(df["Processed Tokens"])),
                    yaxis_title="perplexity (lower is better)")


def checkpoints_figure() -> go.Figure:
    """Both runs' perplexity by checkpoint step (the revisions people can load)."""
    fig = go.Figure()
    for name, label, colour in (("ttl-160m-perplexity", "TeenyTinyLlama-160m", OWN_COLOUR),
                                ("ttl-460m-perplexity", "TeenyTinyLlama-460m", "#1971c2")):
        df = read(name)
        fig.add_scatter(x=df["step"].map(int), y=df["Perplexity"].map(number), name=label,
                        mode="lines+markers", text=df["Perplexity"],
                        hovertemplate="step %{x}: perplexity %{text}<extra>" + label + "</extra>",
                        line=dict(color=colour, width=3))
    return laid_out(fig, "Perplexity by checkpoint", xaxis_title="training step",
                    yaxis_title="perplexity (lower is better)")


def bars_figure(name: str, metric: str = ALL, order: str = ORDERS[0]) -> go.Figure:
    """One metric as sorted bars, or every metric as grouped bars; the
    project's own models in colour, the others in grey."""
    t, df = META[name], read(name)
    if metric != ALL and metric not in t["directions"]:
        raise common.refused(f"{t['title']} has no metric {metric!r}.")
    own = set(t["highlight"])
    df = ordered(name, df, sort_key(name, metric), order)
    fig = go.Figure()
    if metric == ALL:
        for _, row in df.iterrows():
            mine = row["model"] in own
            fig.add_bar(name=row["model"], x=metrics(name), y=[number(row[m]) for m in metrics(name)],
                        text=[row[m] for m in metrics(name)], textposition="none",
                        hovertemplate="%{x}: %{text}<extra>" + row["model"] + "</extra>",
                        marker=dict(line=dict(width=3 if mine else 0, color="black")),
                        opacity=1.0 if mine else 0.5)
        fig.update_layout(barmode="group", legend_title_text="model")
    else:
        fig.add_bar(x=df["model"], y=df[metric].map(number), text=df[metric], textposition="outside",
                    marker_color=[OWN_COLOUR if m in own else OTHER_COLOUR for m in df["model"]],
                    hovertemplate="%{x}: %{text}<extra></extra>")
    arrow = "" if metric == ALL else (" ↑" if t["directions"][metric] == "higher" else " ↓")
    # Grouped bars are taller: on a phone their legend of a dozen models
    # takes a third of the height.
    return laid_out(fig, t["title"] + ("" if metric == ALL else f" — {metric}{arrow}"),
                    height=LAYOUT["height"] + (140 if metric == ALL else 0), yaxis_title=(metric if metric != ALL else "score")
                    + (f" ({t['unit']})" if t["unit"] else ""))


def heatmap_figure(name: str) -> go.Figure:
    """Models by tasks. Colour is each column's rank scale (best = 1, worst =
    0, direction-aware), so accuracies and MSEs share one scale; the cells
    show the published numbers."""
    t, df = META[name], read(name)
    cols = metrics(name)
    z = []
    for _, row in df.iterrows():
        line = []
        for m in cols:
            values = [v for v in df[m].map(number) if not math.isnan(v)]
            v = number(row[m])
            if math.isnan(v) or max(values) == min(values):
                line.append(None if math.isnan(v) else 0.5)
                continue
            score = (v - min(values)) / (max(values) - min(values))
            line.append(score if t["directions"][m] == "higher" else 1 - score)
        z.append(line)
    labels = [("★ " if m in t["highlight"] else "") + m for m in df["model"]]
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=labels, text=df[cols].values, texttemplate="%{text}",
        colorscale="Blues", zmin=0, zmax=1, hovertemplate="%{y} · %{x}: %{text}<extra></extra>",
        colorbar=dict(title="best in column", tickvals=[0, 1], ticktext=["worst", "best"])))
    return laid_out(fig, t["title"] + " — models by tasks", height=max(300, 60 + 36 * len(df)),
                    yaxis=dict(autorange="reversed"))


def all_figures() -> list[go.Figure]:
    figs = [perplexity_figure(s) for s in SECOND_AXIS] + [checkpoints_figure()]
    for _, name in COMPARISONS:
        figs += [heatmap_figure(name)] + [bars_figure(name, ALL, o) for o in ORDERS]
        figs += [bars_figure(name, m, ORDERS[1]) for m in metrics(name)]
    return figs


# -- handlers -----------------------------------------------------------------
def check_table(name) -> str:
    if name not in dict((v, k) for k, v in COMPARISONS):
        raise common.refused(f"Unknown table {name!r}. Choose one of: "
                             f"{', '.join(v for _, v in COMPARISONS)}.")
    return name


def benchmark_table(name):
    """A published benchmark table of these models, exactly as published,
    with its metric choices, source and footnotes, plots and the CSV.

    Args:
        name: the table: "ttl-460m-perplexity", "ttl-160m-perplexity", "harness-en", "harness-pt", "finetuning", "aira-2", "notebooks-decoders", "notebooks-encoders" or "tinyllama-tweet".
    """
    name = check_table(name)
    return (gr.Dropdown(choices=[ALL] + metrics(name), value=ALL), describe(name),
            bars_figure(name), heatmap_figure(name), as_published(name), download_path(name))


def benchmark_metric(name, metric, order):
    """A published table's bar chart and rows for one metric, in an order.

    Args:
        name: the table, as for benchmark_table.
        metric: one of the table's metrics, or "All metrics (grouped)".
        order: "As published", "Best first" or "Worst first".
    """
    name = check_table(name)
    if metric != ALL and metric not in metrics(name):
        raise common.refused(f"{META[name]['title']} has no metric {metric!r}. Choose one of: "
                             f"{', '.join([ALL] + metrics(name))}.")
    rows = ordered(name, read(name), sort_key(name, metric), order).index
    return bars_figure(name, metric, order), as_published(name).loc[rows]


@common.engine_errors
def measure_here(engine, text, model_key="ttl-160m", progress=gr.Progress()):
    """Measure on this machine, now: the perplexity of a text under
    TeenyTinyLlama, each token's surprisal, and the decoding speed of every
    generative model loaded.

    Args:
        text: the text to score.
        model_key: "ttl-160m" or "ttl-460m".
    """
    if model_key not in dict((v, k) for k, v in PPL_MODELS):
        raise common.refused(f"Perplexity is measured with {' or '.join(k for _, k in PPL_MODELS)}, "
                             f"not {model_key!r}.")
    scored = api.perplexity(engine, model_key, text, status=common.status(progress))
    p, spec = scored.perplexity, REGISTRY[model_key]
    rows = [[title, f"{speed.tokens_per_second:.1f}", speed.new_tokens, f"{speed.seconds:.2f}",
             revision, label]
            for title, revision, label, speed in api.decoding_speeds(
                engine, text, status=common.status(progress))]
    whose = "a **stand-in** (tiny random weights: these numbers say nothing about the real model)" \
        if scored.is_standin else f"`{spec.hub_id}` @ {scored.revision}"
    cut = " (cut to the context window)" if p.dropped else ""
    summary = (f"### Measured here, now: perplexity **{p.value:.2f}**\n"
               f"{spec.title} on this machine ({scored.label}), {whose}, over {len(p.tokens)} "
               f"tokens of your text{cut}. Not comparable to the published perplexities, "
               "which were measured on the authors' held-out corpus.")
    speeds = pd.DataFrame(rows, columns=SPEED_COLUMNS)
    # Tokens as the generation tab's tables show them, in bits as there.
    surprisal = pd.DataFrame([[token_cell(t.text), f"{t.surprise_bits:.2f}"] for t in p.tokens],
                             columns=SURPRISAL_COLUMNS)
    return summary, speeds, surprisal


# -- layout -------------------------------------------------------------------
def table_view(value=None, **kwargs) -> gr.Dataframe:
    """A table that fits the page: long headers and cells wrap, and a table
    still too wide (the LLM-Notebooks ones, 16 columns) scrolls in its own
    box. The class `pin-first` lets a style rule keep its first column (the
    model) in view while it scrolls: Gradio 6.31 takes `pinned_columns` but
    does not draw it."""
    return gr.Dataframe(value, interactive=False, wrap=True, elem_classes="pin-first", **kwargs)


def build(engine) -> None:
    gr.Markdown("Published figures, **exactly as published** (tables as text, digit for "
                "digit). The TeenyTinyLlama models and the app's other served models are "
                "highlighted. Save a chart as PNG with the camera icon in its toolbar; "
                "download any table as CSV.")

    with gr.Accordion("Training: perplexity, energy and emissions", open=True):
        gr.Markdown(describe("ttl-460m-perplexity"))
        # Plot and table side by side at equal widths, the table's columns
        # sized so that its headers wrap between words, not inside them.
        with gr.Row(equal_height=False):
            with gr.Column():
                second = gr.Radio(list(SECOND_AXIS), value=SECOND_AXIS[0], label="Second axis")
                ppl_plot = gr.Plot(perplexity_figure(), show_label=False, elem_id="bench-perplexity")
            with gr.Column():
                table_view(read("ttl-460m-perplexity"), label="As published", max_height=640,
                           column_widths=["14%", "18%", "20%", "26%", "22%"],
                           elem_id="bench-training")
                gr.DownloadButton("Download CSV", download_path("ttl-460m-perplexity"), size="sm")
        second.change(perplexity_figure, second, ppl_plot, api_name="perplexity_figure")
        gr.Markdown(describe("ttl-160m-perplexity"))
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.Plot(checkpoints_figure(), show_label=False, elem_id="bench-checkpoints")
            with gr.Column():
                table_view(read("ttl-160m-perplexity"), label="As published")
                gr.DownloadButton("Download CSV", download_path("ttl-160m-perplexity"), size="sm")

    with gr.Accordion("Benchmarks and fine-tuning", open=True):
        first = COMPARISONS[0][1]
        with gr.Row():
            table = gr.Dropdown(COMPARISONS, value=first, label="Table")
            metric = gr.Dropdown(EVERY_METRIC, value=ALL, label="Metric")
            order = gr.Radio(list(ORDERS), value=ORDERS[0], label="Sort")
        about = gr.Markdown(describe(first))
        bars = gr.Plot(bars_figure(first), show_label=False, elem_id="bench-bars")
        # Full width: the widest table has 16 columns.
        exact = table_view(as_published(first), label="As published", elem_id="bench-exact")
        download = gr.DownloadButton("Download CSV", download_path(first), size="sm")
        heat = gr.Plot(heatmap_figure(first), show_label=False, elem_id="bench-heatmap")
        table.change(benchmark_table, table, [metric, about, bars, heat, exact, download],
                     api_name="benchmark_table")
        gr.on([metric.change, order.change], benchmark_metric, [table, metric, order], [bars, exact],
              api_name="benchmark_metric")
        # The page offers only the first table's metrics (see EVERY_METRIC).
        gr.on(None, lambda: gr.Dropdown(choices=[ALL] + metrics(first), value=ALL), None, metric,
              api_visibility="private")

    with gr.Accordion("Measured here (this machine, now — not a published figure)", open=True):
        gr.Markdown("Perplexity of a TeenyTinyLlama on **your** text, and the decoding speed "
                    "(greedy, up to 32 new tokens, after the first token) of every text model "
                    "loaded in this app so far. Measured live on the machine serving this page.")
        with gr.Row():
            text = gr.Textbox(label="Text to score", lines=3, max_length=common.MAX_TEXT_CHARS,
                              value="A PUCRS é uma universidade privada localizada em Porto Alegre.")
            model = gr.Dropdown(PPL_MODELS, value="ttl-160m", label="Model for perplexity")
        go_button = gr.Button("Measure here", variant="primary")
        result = gr.Markdown("*Nothing measured yet: press **Measure here**.*",
                             elem_id="bench-measured")
        speeds = table_view(headers=SPEED_COLUMNS, label="Decoding speed, measured here",
                            elem_id="bench-speeds")
        surprisal = table_view(headers=SURPRISAL_COLUMNS, elem_id="bench-surprisal", max_height=400,
                               label="Surprisal per token (−log₂ p), measured here")
        go_button.click(common.bind(measure_here, engine), [text, model],
                        [result, speeds, surprisal], api_name="measure_here")
