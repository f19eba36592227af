"""Fine-tune tab: a TeenyTinyLlama trained here into a classifier of one's
own, from a TSV or CSV of texts and labels (the LLM-Notebooks seed's
Finetunning-LanguageModel notebook), with a live loss and accuracy plot,
held-out scores, and the model served in the Classification tab and the
API as `custom/<name>`."""

from __future__ import annotations

import time
import uuid
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from inference import api
from inference.registry import REGISTRY

from . import benchmarks, common

LIMITS = api.finetune.LIMITS
BASES = [(REGISTRY[k].title, k) for k in api.finetune.BASES]
METHODS = [(title, key) for key, title in api.finetune.METHODS.items()]
# LoRA trains a few weights and wants a larger step than training all of
# them (the fine-tunes' cards: 4e-5).
LEARNING_RATES = {"lora": 2e-4, "full": 4e-5}
FILE_TYPES = [".tsv", ".csv", ".txt"]
PREVIEW_ROWS = 10
METRIC_COLUMNS = ["metric", "value"]
ABANDONED_S = 5.0   # a job nobody asks about for this long (page closed, client gone) stops


class Watch:
    """A job's cancel, set once its handler is no longer asked for updates
    (a closed page, a client's cancel): Gradio then stops pulling it."""

    def __init__(self):
        self.pulled = time.monotonic()

    def is_set(self) -> bool:
        return time.monotonic() - self.pulled > ABANDONED_S


@common.engine_errors
def preview(file):
    """The first rows, the label counts and what will be trained on."""
    if not file:
        return (pd.DataFrame(), pd.DataFrame(columns=["label", "rows"]),
                gr.Markdown(visible=False))
    table = api.read_training_file(file)
    head = pd.DataFrame([list(values) + [label] for values, label in table.rows[:PREVIEW_ROWS]],
                        columns=[*table.fields, "label"])
    counts = pd.DataFrame(list(table.counts().items()), columns=["label", "rows"])
    fields = " and ".join(f"`{f}`" for f in table.fields)
    return head, counts, gr.Markdown(
        f"{len(table.rows):,} rows, {len(table.labels)} labels; input: {fields}.", visible=True)


def curve(p: api.finetune.Progress | None = None) -> go.Figure:
    """The training loss and the held-out accuracy and macro-F1 by step.
    (A plotly figure: Gradio's own line plot fails in a tab not shown.)"""
    fig = go.Figure()
    if p is not None:
        for name, points in (("training loss", [(s, v) for s, v in p.losses]),
                             ("held-out accuracy", [(s, a) for s, a, _ in p.evals]),
                             ("held-out macro-F1", [(s, f) for s, _, f in p.evals])):
            if points:
                fig.add_trace(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points],
                                         mode="lines+markers", name=name))
    return benchmarks.laid_out(fig, "Training loss and held-out scores by step", height=360,
                               xaxis_title="step")


def metric_rows(done: api.finetune.Done) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The held-out scores as the seed's benchmark tables show them, and
    the confusion matrix (a row per true label, a column per predicted)."""
    m, meta = done.metrics, done.meta
    scores = pd.DataFrame([
        ("model", done.key), ("base", meta["base_title"] + " (stand-in)" * meta["standin"]),
        ("method", api.finetune.METHODS[meta["method"]]),
        ("Acc ↑", f"{m.accuracy:.4f}"), ("F1 (macro) ↑", f"{m.macro_f1:.4f}"),
        ("held-out rows", str(meta["held_out_rows"])), ("training rows", str(meta["train_rows"])),
        ("steps", f"{meta['steps']} of {meta['total_steps']}"), ("seconds", str(meta["seconds"]))],
        columns=METRIC_COLUMNS)
    confusion = pd.DataFrame(m.confusion, columns=[f"predicted {l}" for l in m.labels])
    confusion.insert(0, "true label", list(m.labels))
    return scores, confusion


def zipped(done: api.finetune.Done) -> str:
    """The saved folder as a zip: unzipped, `from_pretrained` loads it.
    Stored, not compressed: float weights hardly shrink, and a 160m model
    is 650 MB."""
    path = common.result_file(f"{done.key.split('/', 1)[1]}.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(Path(done.folder).iterdir()):
            z.write(f, f"{path.stem}/{f.name}")
    return str(path)


@common.engine_errors
def finetune(engine, file, name, base="ttl-160m", method="lora", epochs=3,
             learning_rate=2e-4, max_length=256, eval_share=0.2, replace=False,
             progress=gr.Progress()):
    """Fine-tune TeenyTinyLlama-160m (or 460m) into a text classifier from a
    TSV or CSV with a header row (columns: text, an optional second text
    `text_b`, and label; 20 to 20,000 rows, 2 to 20 labels), then serve it
    as `custom/<name>` in /classify. Costly: minutes to hours of the
    server's CPU, one job at a time (a second waits). Streams the status,
    the loss and held-out accuracy by step, then accuracy, macro-F1, the
    confusion matrix and a zip of the saved model.

    Args:
        file: the training file (.tsv or .csv, UTF-8, up to 5 MB).
        name: the new model's name: letters, digits, - and _ (served as custom/<name>).
        base: "ttl-160m" or "ttl-460m".
        method: "lora" (LoRA r 8 through peft, the default) or "full" (every weight).
        epochs: passes over the training rows, 1 to 20.
        learning_rate: from 1e-6 to 1e-2 (LoRA: about 2e-4; full: about 4e-5).
        max_length: tokens kept of each input, 16 to 512.
        eval_share: the share of each label's rows held out to evaluate on, 0.05 to 0.5.
        replace: true to replace a model of the same name.
    """
    run_id = uuid.uuid4().hex
    plan = api.finetune.check_plan(base, method, epochs, learning_rate, max_length, eval_share)
    api.check_new_name(engine, name, replace)
    table = api.read_training_file(file)
    watch = Watch()
    # The last run's results go as this one starts.
    yield (run_id, "Starting…", curve(),
           pd.DataFrame(columns=METRIC_COLUMNS), pd.DataFrame(), gr.DownloadButton(visible=False),
           gr.skip())
    shown = None
    for event in api.finetune_run(engine, table, name, plan.base, plan.method, plan.epochs,
                                  plan.learning_rate, plan.max_length, plan.eval_share,
                                  replace, run_id=run_id, cancel=watch):
        p = event.progress if isinstance(event, api.finetune.Done) else event
        progress(p.step / p.total if p.total else None, desc=p.message)
        if isinstance(event, api.finetune.Done):
            break
        seen = (p.message, p.losses, p.evals, p.notice)
        yield (run_id, p.message, gr.skip() if shown and shown[1:3] == seen[1:3]
               else curve(p), gr.skip(), gr.skip(), gr.skip(), common.notice(p.notice))
        shown = seen
        watch.pulled = time.monotonic()
    done = event
    if done.key is None:
        yield "", p.message, curve(p), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    scores, confusion = metric_rows(done)
    message = (f"**{done.key}** is saved and served in the Classification tab and the API. "
               + p.message)
    yield ("", message, curve(p), scores, confusion,
           gr.DownloadButton(f"Download {done.key} (zip)", zipped(done), visible=True),
           common.notice(p.notice))


def stop(engine, run_id):
    api.stop_finetune(engine, run_id)


def build(engine) -> None:
    banner = gr.Markdown(visible=False, elem_classes="notice")
    with gr.Row():
        with gr.Column(scale=3):
            upload = gr.File(label="Training file: TSV or CSV with a header row (text, "
                             "optional text_b, label), UTF-8, up to 5 MB",
                             file_types=FILE_TYPES, type="filepath", elem_id="finetune-file")
            about = gr.Markdown(visible=False)
            head = gr.Dataframe(pd.DataFrame(columns=["text", "text_b", "label"]),
                                label="First rows", interactive=False, wrap=True)
            counts = gr.Dataframe(pd.DataFrame(columns=["label", "rows"]), label="Rows per label",
                                  interactive=False)
        with gr.Column(scale=2):
            name = gr.Textbox(label="Name (served as custom/<name>)", max_length=48,
                              placeholder="my-classifier")
            base = gr.Radio(BASES, value="ttl-160m", label="Base model")
            method = gr.Radio(METHODS, value="lora", label="Method")
            epochs = gr.Slider(*LIMITS.epochs, 3, step=1, precision=0, label="Epochs")
            learning_rate = gr.Number(LEARNING_RATES["lora"], label="Learning rate",
                                      minimum=LIMITS.learning_rate[0],
                                      maximum=LIMITS.learning_rate[1])
            max_length = gr.Slider(*LIMITS.max_length, 256, step=1, precision=0,
                                   label="Maximum length (tokens)")
            eval_share = gr.Slider(*LIMITS.eval_share, 0.2, step=0.05,
                                   label="Evaluation share (held out per label)")
            replace = gr.Checkbox(False, label="Replace a model of the same name")
            with gr.Row():
                train = gr.Button("Train", variant="primary")
                halt = gr.Button("Stop", variant="stop")
    status = gr.Markdown()
    plot = gr.Plot(curve(), show_label=False, elem_id="finetune-curve")
    with gr.Row():
        scores = gr.Dataframe(pd.DataFrame(columns=METRIC_COLUMNS), label="Held-out evaluation",
                              interactive=False, wrap=True)
        confusion = gr.Dataframe(pd.DataFrame(columns=["true label"]),
                                 label="Confusion matrix (rows: true label)",
                                 interactive=False, wrap=True)
    download = gr.DownloadButton("Download (zip)", visible=False)
    # The run's id, for the page's Stop button. Not a gr.State: that would
    # keep a heartbeat request open for as long as the page is.
    run_id = gr.Textbox(visible=False)

    upload.change(preview, upload, [head, counts, about],
                  api_visibility="private")
    method.change(lambda m: LEARNING_RATES.get(m, gr.skip()), method, learning_rate,
                  api_visibility="private")
    # One job at a time: the page's and the API's calls queue here.
    job = train.click(common.bind(finetune, engine),
                      [upload, name, base, method, epochs, learning_rate, max_length, eval_share,
                       replace], [run_id, status, plot, scores, confusion, download, banner],
                      api_name="finetune", concurrency_limit=1, concurrency_id="finetune")
    job.then(lambda: "", None, run_id, api_visibility="private")
    # Stop ends training after the step running; what was trained is saved
    # and scored, and the job's own stream shows it.
    halt.click(common.bind(stop, engine), run_id, None, api_visibility="private")

