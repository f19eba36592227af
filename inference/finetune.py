"""Fine-tuning a TeenyTinyLlama into a classifier of one's own, as the
LLM-Notebooks seed's Finetunning-LanguageModel notebook does from a TSV
loaded into pandas: a table of texts and labels, the base model as
`LlamaForSequenceClassification` with the table's label map, transformers'
`Trainer` (LoRA through peft by default, or every weight), then accuracy,
macro-F1 and a confusion matrix on a held-out share. The result is saved
as a plain `save_pretrained` folder in the data directory (custom.py),
served like the registry's classifiers.

The training settings follow the TeenyTinyLlama fine-tunes' cards (batch 16,
weight decay 0.01, 256-token truncation by default).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from . import custom, fastpath
from .errors import EngineError
from .loading import BUILDING
from .registry import REGISTRY


@dataclass(frozen=True)
class Bounds:
    """What a fine-tuning request may ask for (one place; the tab's
    controls and the messages read them here)."""
    file_bytes: int = 5_000_000          # the app's upload limit (launch's max_file_size)
    rows: tuple[int, int] = (20, 20_000)
    labels: tuple[int, int] = (2, 20)
    label_chars: int = 100
    text_chars: int = 20_000             # as a text sent to a classifier
    max_length: tuple[int, int] = (16, 512)
    epochs: tuple[int, int] = (1, 20)
    learning_rate: tuple[float, float] = (1e-6, 1e-2)
    eval_share: tuple[float, float] = (0.05, 0.5)


LIMITS = Bounds()
BASES = ("ttl-160m", "ttl-460m")
METHODS = {"lora": "LoRA (peft)", "full": "Full fine-tuning"}
BATCH_SIZE = 16          # the fine-tunes' cards
WEIGHT_DECAY = 0.01      # the fine-tunes' cards
LORA_R, LORA_ALPHA = 8, 16
EVALS = 4                # held-out evaluations during a run, for the live plot
LOSS_POINTS = 50         # loss points logged over a run
SEED = 0
# Column names a file may use for its second text; the label column is
# `label`, else the last one.
SECOND_TEXT = ("text_b", "text2", "second_text", "text_pair")


@dataclass(frozen=True)
class Table:
    """A training file as read: one or two text fields and a label per row."""
    fields: tuple[str, ...]
    rows: list[tuple[tuple[str, ...], str]] = field(repr=False)
    labels: tuple[str, ...]        # sorted: the model's ids in this order

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.labels, 0)
        for _, label in self.rows:
            out[label] += 1
        return out


def refuse(message: str, title: str = "Bad training file") -> EngineError:
    return EngineError(message, title=title)


def read_table(data: bytes, filename: str = "data.tsv") -> Table:
    """A TSV or CSV (by its name; else by its first line) with a header
    row: the label in the column named `label` (else the last), the text in
    the first other column and, where there is one, a second text."""
    if len(data) > LIMITS.file_bytes:
        raise refuse(f"The file is {len(data):,} bytes; the limit is {LIMITS.file_bytes:,}.",
                     "File too large")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise refuse("The file is not UTF-8 text: save it as UTF-8 (in a spreadsheet: "
                     "CSV UTF-8) and upload it again.") from None
    lines = text.splitlines()
    if not lines or not text.strip():
        raise refuse("The file is empty.", "Nothing to do")
    name = filename.lower()
    tab = name.endswith(".tsv") or (not name.endswith(".csv") and "\t" in lines[0])
    records = [r for r in csv.reader(io.StringIO(text), delimiter="\t" if tab else ",")
               if any(c.strip() for c in r)]
    header = [c.strip().lower() for c in records[0]]
    if not 2 <= len(header) <= 3:
        raise refuse(f"The file has {len(header)} column(s): it needs a header row and 2 or 3 "
                     "columns, the text, an optional second text and the label "
                     f"({'tab' if tab else 'comma'}-separated).")
    label_at = header.index("label") if "label" in header else len(header) - 1
    texts = [i for i in range(len(header)) if i != label_at]
    fields = custom.FIELDS[len(texts)][0]
    rows = []
    for n, record in enumerate(records[1:], 2):   # line numbers as a spreadsheet shows them
        if len(record) != len(header):
            raise refuse(f"Line {n} has {len(record)} column(s); the header has {len(header)}.")
        values = tuple(record[i].strip() for i in texts)
        label = record[label_at].strip()
        if not all(values) or not label:
            raise refuse(f"Line {n} has an empty {'label' if not label else 'text'}.")
        if max(map(len, values)) > LIMITS.text_chars:
            raise refuse(f"Line {n}'s text is {max(map(len, values)):,} characters; the limit "
                         f"is {LIMITS.text_chars:,}.")
        if len(label) > LIMITS.label_chars:
            raise refuse(f"Line {n}'s label is longer than {LIMITS.label_chars} characters.")
        rows.append((values, label))
    low, high = LIMITS.rows
    if not low <= len(rows) <= high:
        raise refuse(f"The file has {len(rows):,} rows; fine-tuning takes {low:,} to {high:,}.",
                     "Too few rows" if len(rows) < low else "Too many rows")
    table = Table(fields, rows, tuple(sorted({label for _, label in rows})))
    low, high = LIMITS.labels
    if not low <= len(table.labels) <= high:
        raise refuse(f"The file has {len(table.labels)} label(s); fine-tuning takes {low} to "
                     f"{high}.")
    lonely = [label for label, n in table.counts().items() if n < 2]
    if lonely:
        raise refuse(f"The label(s) {', '.join(map(repr, lonely[:5]))} have a single row: each "
                     "label needs at least 2, one to train on and one to test on.")
    return table


@dataclass(frozen=True)
class Plan:
    base: str = "ttl-160m"
    method: str = "lora"
    epochs: int = 3
    learning_rate: float = 4e-5
    max_length: int = 256
    eval_share: float = 0.2


def check_plan(base, method, epochs, learning_rate, max_length, eval_share) -> Plan:
    """The settings of a request, each checked against LIMITS."""
    if base not in BASES:
        raise EngineError(f"The base model must be one of {', '.join(BASES)}; got {base!r}.",
                          title="Invalid setting")
    if method not in METHODS:
        raise EngineError(f"The method must be one of {', '.join(METHODS)}; got {method!r}.",
                          title="Invalid setting")

    def number(value, what, bounds, whole):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and bounds[0] <= value <= bounds[1] \
            and (not whole or value == int(value))
        if not ok:
            kind = "a whole number" if whole else "a number"
            raise EngineError(f"{what} must be {kind} from {bounds[0]:g} to {bounds[1]:g}; got "
                              f"{value!r}.", title="Invalid setting")
        return int(value) if whole else float(value)
    return Plan(base, method, number(epochs, "Epochs", LIMITS.epochs, True),
                number(learning_rate, "The learning rate", LIMITS.learning_rate, False),
                number(max_length, "The maximum length", LIMITS.max_length, True),
                number(eval_share, "The evaluation share", LIMITS.eval_share, False))


def split(table: Table, share: float, seed: int = SEED) -> tuple[list[int], list[int]]:
    """Row indices to train on and to hold out: `share` of each label held
    out (at least one row), so every label is both learned and tested."""
    rng = random.Random(seed)
    train, held = [], []
    for label in table.labels:
        rows = [i for i, (_, l) in enumerate(table.rows) if l == label]
        rng.shuffle(rows)
        k = min(len(rows) - 1, max(1, round(share * len(rows))))
        held += rows[:k]
        train += rows[k:]
    rng.shuffle(train)
    return train, sorted(held)


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    macro_f1: float
    confusion: list[list[int]]     # [true label][predicted label], in label order
    labels: tuple[str, ...]


def score(labels: tuple[str, ...], truth: list[int], predicted: list[int]) -> Metrics:
    """Accuracy, macro-F1 (each label's F1, averaged; 0 for a label never
    predicted nor present) and the confusion matrix."""
    n = len(labels)
    confusion = torch.zeros((n, n), dtype=torch.long)
    for t, p in zip(truth, predicted):
        confusion[t, p] += 1
    hits = confusion.diag().float()
    precision = hits / confusion.sum(0).clamp(min=1)
    recall = hits / confusion.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall),
                     torch.zeros(n))
    return Metrics(float(hits.sum() / max(1, len(truth))), float(f1.mean()),
                   confusion.tolist(), labels)


@dataclass(frozen=True)
class Progress:
    """A running job as it stands: its step, the loss and held-out scores
    so far, and what it is doing."""
    message: str
    step: int = 0
    total: int = 0
    losses: tuple[tuple[int, float], ...] = ()                # (step, training loss)
    evals: tuple[tuple[int, float, float], ...] = ()          # (step, accuracy, macro-F1)
    notice: str | None = None                                 # the base's stand-in banner


@dataclass(frozen=True)
class Done:
    """A finished job: the saved model's key and folder, its held-out
    scores, and whether it was stopped early (what was trained is saved)."""
    key: str | None           # None: stopped before the first step, nothing saved
    folder: str | None
    metrics: Metrics | None
    stopped: bool
    progress: Progress
    meta: dict


class Jobs:
    """One fine-tuning job at a time (a small machine trains one no faster
    for sharing it), and a way to stop the one running by its id."""

    def __init__(self):
        self._lock = threading.Lock()
        self._guard = threading.Lock()
        self._stops: dict[str, threading.Event] = {}

    @contextmanager
    def one(self, run_id: str, stop: threading.Event, waiting: Callable[[], None]):
        """Held while the job runs; a job arriving while another runs waits
        (`waiting()` each second) until it ends, or until it is stopped."""
        with self._guard:
            self._stops[run_id] = stop
        try:
            while not self._lock.acquire(timeout=1.0):
                if stop.is_set():
                    raise EngineError("Stopped while waiting for the job before it.",
                                      title="Stopped")
                waiting()
            try:
                yield
            finally:
                self._lock.release()
        finally:
            with self._guard:
                self._stops.pop(run_id, None)

    def stop(self, run_id: str) -> bool:
        with self._guard:
            stop = self._stops.get(run_id)
        if stop is not None:
            stop.set()
        return stop is not None


def _classifier(loaded, table: Table, plan: Plan):
    """The base causal model as a LlamaForSequenceClassification with the
    table's label map: its transformer shared, a new `score` head."""
    from transformers import LlamaForSequenceClassification
    config = loaded.model.config.__class__.from_dict(loaded.model.config.to_dict())
    config.architectures = ["LlamaForSequenceClassification"]
    config.num_labels = len(table.labels)
    config.id2label = dict(enumerate(table.labels))
    config.label2id = {l: i for i, l in enumerate(table.labels)}
    config.problem_type = "single_label_classification"
    config.pad_token_id = loaded.tokenizer.pad_token_id
    config.use_cache = False   # training; the published configs say so too
    for attr in ("standin",):   # a stand-in's marker: the saved model is not a stand-in folder
        if hasattr(config, attr):
            delattr(config, attr)
    torch.manual_seed(SEED)
    with BUILDING:
        model = LlamaForSequenceClassification(config)
    model.model = loaded.model.model   # the base's weights; only the head is new
    if plan.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model
        # SEQ_CLS keeps the `score` head trainable (and saved) beside the adapter.
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=LORA_R,
                                                 lora_alpha=LORA_ALPHA, lora_dropout=0.05))
    return model


def _encode(tokenizer, fields: tuple[str, ...], rows, max_length: int) -> list[dict]:
    from .formats import encode
    fmt = custom.FIELDS[len(fields)][1]
    return [{"input_ids": encode(fmt, tokenizer, dict(zip(fields, values)))[:max_length],
             "labels": label} for values, label in rows]


def train(engine, table: Table, plan: Plan, name: str, stop: threading.Event,
          report: Callable[[Progress], None]) -> Done:
    """Train, evaluate and save `name`; `report` gets each Progress. Setting
    `stop` ends training after the step running; what was trained so far
    is then evaluated and saved."""
    from transformers import (DataCollatorWithPadding, PrinterCallback, Trainer,
                              TrainerCallback, TrainingArguments)
    started = time.time()
    state = {"progress": Progress("Loading the base model…")}

    def tell(**changes) -> None:
        from dataclasses import replace
        state["progress"] = replace(state["progress"], **changes)
        report(state["progress"])

    base = REGISTRY[plan.base]
    # The base as the engine loads it (real weights where they can be had,
    # else its stand-in with the banner saying so), but a copy of its own:
    # not the engine's cached, int8 one.
    loaded = engine.fallback.load(base, base.revision, lambda msg: tell(message=msg))
    tell(message="Preparing the data…", notice=loaded.notice)
    label_ids = {l: i for i, l in enumerate(table.labels)}
    train_rows, held_rows = split(table, plan.eval_share)
    encoded = _encode(loaded.tokenizer, table.fields,
                      [(table.rows[i][0], label_ids[table.rows[i][1]]) for i in train_rows + held_rows],
                      plan.max_length)
    train_set, held_set = encoded[:len(train_rows)], encoded[len(train_rows):]
    model = _classifier(loaded, table, plan)
    steps_per_epoch = math.ceil(len(train_set) / BATCH_SIZE)
    total = steps_per_epoch * plan.epochs
    evals_at = {math.ceil(total * k / EVALS) for k in range(1, EVALS)} - {total}

    class Report(TrainerCallback):
        def on_step_end(self, args, st, control, **kwargs):
            tell(message=f"Training: step {st.global_step} of {total}", step=st.global_step)
            if stop.is_set():
                control.should_training_stop = True
            elif st.global_step in evals_at:
                control.should_evaluate = True

        def on_log(self, args, st, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                tell(losses=state["progress"].losses + ((st.global_step, float(logs["loss"])),))

        def on_evaluate(self, args, st, control, metrics=None, **kwargs):
            if metrics and "eval_accuracy" in metrics:
                tell(evals=state["progress"].evals + (
                    (st.global_step, metrics["eval_accuracy"], metrics["eval_macro_f1"]),))

    def compute_metrics(prediction):
        m = score(table.labels, list(prediction.label_ids), predicted(prediction))
        return {"accuracy": m.accuracy, "macro_f1": m.macro_f1}

    work = tempfile.mkdtemp(prefix="ttl-finetune-")
    args = TrainingArguments(
        output_dir=work, num_train_epochs=plan.epochs, learning_rate=plan.learning_rate,
        per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=BATCH_SIZE,
        weight_decay=WEIGHT_DECAY, eval_strategy="no", save_strategy="no",
        logging_strategy="steps", logging_steps=max(1, total // LOSS_POINTS),
        report_to=[], disable_tqdm=True, use_cpu=engine.device.type == "cpu",
        seed=SEED, dataloader_pin_memory=False, optim="adamw_torch")
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=held_set,
                      data_collator=DataCollatorWithPadding(loaded.tokenizer),
                      compute_metrics=compute_metrics, callbacks=[Report()])
    trainer.remove_callback(PrinterCallback)   # the page shows the progress, not the log
    try:
        with few_threads():
            if not stop.is_set():
                trainer.train()
            steps = trainer.state.global_step
            if steps == 0:
                tell(message="Stopped before the first step: nothing was saved.")
                return Done(None, None, None, True, state["progress"], {})
            tell(message="Evaluating on the held-out rows…")
            out = trainer.predict(held_set)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = score(table.labels, list(out.label_ids), predicted(out))
    stopped = steps < total
    tell(message="Saving…", evals=state["progress"].evals + (
        (steps, metrics.accuracy, metrics.macro_f1),))
    if plan.method == "lora":   # the adapter merged into the weights: served as a plain model
        model = model.merge_and_unload()
    meta = dict(
        name=name, base=base.key, base_title=base.title, base_hub_id=base.hub_id,
        base_revision=loaded.revision, base_source=loaded.source, standin=loaded.is_standin,
        fields=list(table.fields), labels=list(table.labels), rows=len(table.rows),
        train_rows=len(train_rows), held_out_rows=len(held_rows),
        **{k: v for k, v in asdict(plan).items() if k != "base"},
        lora_r=LORA_R if plan.method == "lora" else None, batch_size=BATCH_SIZE,
        steps=steps, total_steps=total, stopped=stopped, seconds=round(time.time() - started, 1),
        metrics=asdict(metrics), date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path = save(engine.settings.data_dir, name, model, loaded.tokenizer, meta)
    engine.unload(custom.PREFIX + name)   # a model trained again under its name: the new one
    tell(message=(f"Stopped at step {steps} of {total}; saved what was trained." if stopped
                  else "Done."), step=steps)
    return Done(custom.PREFIX + name, str(path), metrics, stopped, state["progress"], meta)


def predicted(prediction) -> list[int]:
    logits = prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits   # (logits, ...) from some models
    return logits.argmax(-1).tolist()


@contextmanager
def few_threads():
    """Training on fewer threads than the cores, so that the engine's
    compute thread keeps one for the requests served meanwhile. torch's
    thread count is the process's: requests run on one thread while a job
    trains, and the count goes back to one per core after it."""
    cores = fastpath.cores()
    torch.set_num_threads(max(1, cores - 1))
    try:
        yield
    finally:
        torch.set_num_threads(cores)


def save(data_dir: str, name: str, model, tokenizer, meta: dict) -> Path:
    """model, tokenizer and metadata in `custom/<name>/`, written beside it
    first: a half-saved model is never listed, and one it replaces stays
    until the new one is complete."""
    out = custom.folder(data_dir, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        model.config.use_cache = True
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / custom.META).write_text(json.dumps(meta, indent=2, ensure_ascii=False),
                                       encoding="utf-8")
        old = out.with_name(f".{name}-old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
