"""The app's look: Gradio's Soft theme in the colours of the llama cards."""

import gradio as gr

from .common import ASSETS

THEME = gr.themes.Soft(primary_hue="amber", secondary_hue="emerald", neutral_hue="stone")
CSS = (ASSETS / "style.css").read_text(encoding="utf-8")
