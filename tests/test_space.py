"""The README's front matter is the Space's configuration: it must name the
Gradio and Python the app is tested with and preload the default models."""

import sys
from pathlib import Path

import gradio
import yaml

from inference.registry import DEFAULT_KEYS, REGISTRY

README = Path(__file__).resolve().parent.parent / "README.md"


def front_matter() -> dict:
    text = README.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_front_matter_names_the_tested_versions_and_preloads_the_default_models():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert meta["app_file"] == "app.py" and len(meta["short_description"]) <= 60
    assert meta["preload_from_hub"] == [REGISTRY[k].hub_id for k in DEFAULT_KEYS]
    assert set(meta["preload_from_hub"]) <= set(meta["models"])
