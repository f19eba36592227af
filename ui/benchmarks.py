"""Benchmarks tab: the published tables of the served models, as charts and
as the exact tables."""

from __future__ import annotations

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from . import common

TABLES = common.ASSETS / "benchmarks"
OWN = ("TTL-160m", "TTL-460m")   # the project's own models, highlighted


def read(name: str) -> pd.DataFrame:
    # Kept as text so that every number shows exactly as published ("90.00").
    return pd.read_csv(TABLES / f"{name}.csv", dtype=str, keep_default_na=False)


def grouped_bars(df: pd.DataFrame, title: str) -> go.Figure:
    fig = go.Figure()
    metrics = [c for c in df.columns[1:]]
    for _, row in df.iterrows():
        own = row.iloc[0] in OWN
        fig.add_bar(name=row.iloc[0], x=metrics, y=[float(row[c]) for c in metrics],
                    marker_line_width=2 if own else 0, opacity=1.0 if own else 0.55)
    fig.update_layout(title=title, barmode="group", yaxis_title="accuracy (%)",
                      template="plotly_white", legend_title_text="model", height=420)
    return fig


def build(engine) -> None:
    df = read("finetuning")
    gr.Markdown("### Fine-tuning comparisons\nAccuracy on each task's test set after "
                "fine-tuning (TeenyTinyLlama model cards).")
    gr.Plot(grouped_bars(df, "Fine-tuning accuracy by task"))
    gr.Dataframe(df, interactive=False)
