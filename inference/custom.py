"""Models fine-tuned here (finetune.py), kept in the data directory
(`Settings.data_dir`, TTL_DATA_DIR) as `custom/<name>/`: a `save_pretrained`
folder (model and tokenizer) and `finetune.json`, what it was trained from
and how it scored. They survive a restart.

Each is served as the registry's classifiers are, from a `ModelSpec` built
from its folder. `lookup` is the one place that turns a key into a spec:
the registry's entries, then the data directory's `custom/<name>`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .registry import CLASSIFY, REGISTRY, ModelSpec, by_task

PREFIX = "custom/"
FOLDER = "custom"          # under the data directory
META = "finetune.json"
# A name is a folder name too: letters, digits, - and _, so that no name
# can reach outside the custom folder ("..", "/", "~", a drive letter).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
# The input fields of a custom model and how they are joined (formats.py).
FIELDS = {1: (("text",), "plain"), 2: (("text", "text_b"), "text-pair")}


def check_name(name) -> str:
    """A model name from a person or a client, or ValueError saying why not."""
    if not isinstance(name, str) or not NAME.fullmatch(name.strip()):
        raise ValueError(f"The name {str(name)[:60]!r} is not allowed: use 1 to 48 letters, "
                         "digits, - and _, starting with a letter or digit.")
    return name.strip()


def root(data_dir: str) -> Path:
    return Path(data_dir) / FOLDER


def folder(data_dir: str, name: str) -> Path:
    return root(data_dir) / check_name(name)


def spec_from(path: Path) -> ModelSpec | None:
    """The spec of the model saved in `path`, or None when there is none
    there (no folder, or one a save did not finish)."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        id2label = config["id2label"]
        labels = tuple(id2label[k] for k in sorted(id2label, key=int))
        inputs, prompt_format = FIELDS[len(meta["fields"])]
        shape = REGISTRY[meta["base"]].shape
    except (OSError, ValueError, KeyError, TypeError):   # half-written, or edited by hand
        return None
    return ModelSpec(
        key=PREFIX + path.name, title=f"{path.name} (fine-tuned {meta['base_title']})",
        hub_id=str(path), task=CLASSIFY, model_class="LlamaForSequenceClassification",
        shape=shape, prompt_format=prompt_format, labels=labels,
        inputs=inputs, max_input_tokens=int(meta["max_length"]), directory=str(path))


def lookup(data_dir: str, key) -> ModelSpec:
    """The spec for `key`: a registry entry or a saved `custom/<name>`.
    KeyError (with the known keys) for anything else."""
    if isinstance(key, str) and key in REGISTRY:
        return REGISTRY[key]
    if isinstance(key, str) and key.startswith(PREFIX) and NAME.fullmatch(key[len(PREFIX):]):
        if spec := spec_from(root(data_dir) / key[len(PREFIX):]):
            return spec
    known = ", ".join([*REGISTRY, *(s.key for s in saved(data_dir))])
    raise KeyError(f"Unknown model {key!r}. Known models: {known}.")


def saved(data_dir: str) -> list[ModelSpec]:
    """Every custom model in the data directory, by name."""
    if not root(data_dir).is_dir():
        return []
    specs = (spec_from(p) for p in sorted(root(data_dir).iterdir())
             if p.is_dir() and NAME.fullmatch(p.name))
    return [s for s in specs if s]


def models(data_dir: str, *tasks: str) -> list[ModelSpec]:
    """The registry's models of `tasks`, then the custom ones of them."""
    return by_task(*tasks) + [s for s in saved(data_dir) if s.task in tasks]


def metadata(spec: ModelSpec) -> dict:
    """What a custom model's folder says about its training."""
    return json.loads((Path(spec.directory) / META).read_text(encoding="utf-8"))
