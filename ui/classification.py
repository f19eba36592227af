"""Classification tab: TeenyTinyLlama's fine-tuned classifiers and the
TinyLlama tweet-sentiment adapter, one text at a time or in batches."""

from __future__ import annotations

import contextvars
import io
import threading
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from inference import api
from inference.registry import CLASSIFY, LABEL_SCORE, REGISTRY

from . import common

# Examples per task: (first text, second text, classifier). The IMDB pair is
# the TeenyTinyLlama-160m-IMDB card's own.
EXAMPLES = [
    ["Esqueceram de mim 2 é um dos melhores filmes de natal de todos os tempos.", "",
     "ttl-160m-imdb"],
    ["Esqueceram de mim 2 é o pior filme da franquia inteira.", "", "ttl-160m-imdb"],
    ["Que comentário respeitoso e bem argumentado, parabéns.", "", "ttl-160m-hatebr"],
    ["Seleção brasileira vence a Argentina nas eliminatórias",
     "Com gol no fim do segundo tempo, o Brasil venceu por 1 a 0 e segue na liderança.",
     "ttl-160m-agnews"],
    ["Qual é a capital do Brasil?", "A capital do Brasil é Brasília.", "ttl-160m-faquad-nli"],
    ["Um homem está tocando violão.", "Um homem está tocando um instrumento.",
     "ttl-160m-assin2"],
    ["Just got my dream job, what a day!", "", "tinyllama-tweet"],
]
FIELD_LABELS = {"text": "Text", "title": "Title", "question": "Question",
                "answer": "Answer", "premise": "Premise", "hypothesis": "Hypothesis",
                "text_b": "Second text"}


def models(engine) -> list[tuple[str, str]]:
    """The classifiers to choose from: the registry's, then those
    fine-tuned here (the Fine-tune tab), which appear without a restart."""
    return [(s.title, s.key) for s in api.models(engine, CLASSIFY, LABEL_SCORE)]

MAX_UPLOAD_BYTES = 1_000_000   # ~1 MB of CSV: a demo batch, not a dataset
MAX_BATCH_ROWS = api.MAX_BATCH_ROWS
UPLOAD_TYPES = (".csv", ".txt")
BATCH_POLL_S = 0.25  # how often a running batch's handler yields
ABANDONED_S = 4 * BATCH_POLL_S


class Watch:
    """A batch's cancel, set when its handler is closed or no longer asked
    for updates: Gradio stops asking once the event is cancelled (the Stop
    button, a client's cancel, a closed page), whether or not it closes
    the generator."""

    def __init__(self):
        self.closed, self.pulled = False, time.monotonic()

    def is_set(self) -> bool:
        return self.closed or time.monotonic() - self.pulled > ABANDONED_S


@common.engine_errors
def classify(engine, text, model_key="ttl-160m-imdb", second_text="",
             progress=gr.Progress(track_tqdm=True)):
    """Classify a Portuguese text with a fine-tuned TeenyTinyLlama (movie
    review sentiment, toxicity, news topic, answer suitability, entailment)
    or the TinyLlama tweet-sentiment adapter. Returns each label's
    probability and the stand-in banner.

    Args:
        text: the text (the title, question or premise for the pair tasks).
        model_key: the classifier, e.g. "ttl-160m-imdb", "ttl-460m-hatebr", "ttl-160m-agnews", "ttl-160m-faquad-nli", "ttl-160m-assin2", "tinyllama-tweet", or one fine-tuned here, "custom/<name>".
        second_text: the second text of a pair task (AgNews text, FaQuAD-NLI answer, Assin2 hypothesis); empty otherwise.
    """
    spec = api.check_model(model_key, CLASSIFY, LABEL_SCORE, engine=engine)
    labels = api.classify(engine, model_key, dict(zip(spec.inputs, (text, second_text))),
                          status=common.status(progress))
    return labels.probs, common.notice(labels.notice)


@common.engine_errors
def free_answer(engine, text, model_key):
    """The tweet model's own words for the same prompt (greedy, a few tokens)."""
    if model_key not in REGISTRY or REGISTRY[model_key].task != LABEL_SCORE:
        return gr.Textbox(visible=False)
    return gr.Textbox(api.free_answer(engine, model_key, text), visible=True)


def decoded(data: bytes) -> str:
    """An uploaded file's text, in what Excel and other tools export: UTF-16
    with its byte-order mark, UTF-8 (with or without one), else Windows-1252
    (what Brazilian Excel writes), else Latin-1, which decodes any byte."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def spreadsheet_safe(value):
    """A cell a spreadsheet will not run as a formula (OWASP's advice on CSV
    injection: a leading =, +, -, @, tab or carriage return gets a quote)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def read_rows(spec, file, lines) -> list[dict]:
    """Rows from an uploaded CSV (columns named as the inputs, or the first
    columns in order) or from pasted text (one row a line; pair tasks put a
    tab between the two texts)."""
    fields = spec.inputs
    if file:
        path = Path(file)
        if path.suffix.lower() not in UPLOAD_TYPES:
            raise common.refused("Upload a .csv or .txt file.", title="Unsupported file")
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise common.refused(f"The file is {path.stat().st_size:,} bytes; the limit is "
                                 f"{MAX_UPLOAD_BYTES:,}.", title="File too large")
        text = decoded(path.read_bytes())
        if path.suffix.lower() == ".txt":
            return read_rows(spec, None, text)
        try:
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except (ValueError, pd.errors.ParserError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise common.refused(f"The CSV could not be read ({first}).", title="Bad CSV") from None
        cols = ([f for f in fields] if all(f in df.columns for f in fields)
                else list(df.columns[:len(fields)]))
        if len(cols) < len(fields):
            raise common.refused(f"The CSV needs the columns {', '.join(fields)}.", title="Bad CSV")
        rows = [dict(zip(fields, r)) for r in df[cols].itertuples(index=False)]
    else:
        if lines is not None and not isinstance(lines, str):
            raise common.refused("The texts must be text.")
        if len(lines or "") > MAX_UPLOAD_BYTES:   # the page's box stops there; a client may not
            raise common.refused(f"The pasted texts are {len(lines):,} characters; the limit is "
                                 f"{MAX_UPLOAD_BYTES:,}.", title="Too long")
        rows = [dict(zip(fields, line.split("\t", len(fields) - 1)))
                for line in (lines or "").splitlines()]
        while rows and not any(v.strip() for v in rows[-1].values()):
            rows.pop()   # a trailing blank line is not a row
    if not rows:
        raise common.refused("Upload a CSV or paste one text per line.", title="Nothing to do")
    if len(rows) > MAX_BATCH_ROWS:
        raise common.refused(f"{len(rows):,} rows; the limit is {MAX_BATCH_ROWS:,}.",
                             title="Too many rows")
    return rows


def result_columns(spec) -> list[str]:
    """A batch's results table: each row's texts, then its label, each
    label's probability and why a row was skipped."""
    return ["row", *spec.inputs, "label", *spec.labels, "error"]


@common.engine_errors
def no_results(engine, model_key) -> tuple:
    """The batch outputs emptied: the table keeps its headers (the
    classifier's columns), the chart and the download go."""
    spec = api.check_model(model_key, CLASSIFY, LABEL_SCORE, engine=engine)
    return (pd.DataFrame(columns=result_columns(spec)), pd.DataFrame(columns=["label", "rows"]),
            gr.File(None, visible=False))


@common.engine_errors
def classify_batch(engine, file, lines, model_key, progress=gr.Progress()):
    """Classify many texts at once: a table with the label and the
    probabilities of each row (or why a row was skipped), the label counts,
    the table as a CSV file and the stand-in banner.

    Args:
        file: a CSV (columns named as the classifier's inputs) or a .txt file; or none.
        lines: one text per line when there is no file (pair tasks: a tab between the two texts).
        model_key: the classifier, e.g. "ttl-160m-imdb" or "tinyllama-tweet".
    """
    spec = api.check_model(model_key, CLASSIFY, LABEL_SCORE, engine=engine)
    rows = read_rows(spec, file, lines)
    cancel = Watch()
    ended: list = []
    context = contextvars.copy_context()   # the progress bar is found through it

    def run():
        try:
            ended.append(api.classify_batch(
                engine, model_key, rows, status=common.status(progress), cancel=cancel,
                progress=lambda done, total: progress(done / total, desc=f"{done}/{total} rows")))
        except BaseException as exc:   # raised below, on the handler's thread
            ended.append(exc)
    worker = threading.Thread(target=lambda: context.run(run), name="classify-batch", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(BATCH_POLL_S)
            if worker.is_alive():
                yield (gr.skip(),) * 4
                cancel.pulled = time.monotonic()
    finally:
        cancel.closed = True   # the batch ends before its next chunk of rows
    if isinstance(ended[0], BaseException):
        raise ended[0]
    batch = ended[0]
    results = batch.results
    table = []
    for i, (row, res) in enumerate(zip(rows, results), 1):
        out = {"row": i, **{f: str(row.get(f, ""))[:200] for f in spec.inputs}}
        if isinstance(res, dict):
            out.update(label=max(res, key=res.get), **{l: round(p, 4) for l, p in res.items()},
                       error="")
        else:
            out.update(label="", **{l: None for l in spec.labels}, error=res)
        table.append(out)
    df = pd.DataFrame(table, columns=result_columns(spec))
    counts = (df[df.label != ""].label.value_counts().reindex(spec.labels, fill_value=0)
              .rename_axis("label").reset_index(name="rows"))
    path = common.result_file(f"{model_key}-results.csv")
    df.map(spreadsheet_safe).to_csv(path, index=False)
    yield df, counts, gr.File(str(path), visible=True), common.notice(batch.notice)


def build(engine) -> None:
    banner = gr.Markdown(visible=False, elem_classes="notice")
    with gr.Row():
        with gr.Column(scale=3):
            # Any value reaches the handler, which names the classifiers
            # there are: an API client may name a model fine-tuned since
            # the page was built.
            model = gr.Dropdown(models(engine), value="ttl-160m-imdb", label="Classifier",
                                allow_custom_value=True)
            text = gr.Textbox(label="Text", lines=4, value=EXAMPLES[0][0],
                              max_length=common.MAX_TEXT_CHARS)
            second = gr.Textbox("", label="Second text", lines=2, visible=False,
                                max_length=common.MAX_TEXT_CHARS)
            run = gr.Button("Classify", variant="primary")
            gr.Examples(EXAMPLES, inputs=[text, second, model], label="Examples per task")
        with gr.Column(scale=2):
            labels = gr.Label(label="Label probabilities", num_top_classes=4)
            free = gr.Textbox(label="What free generation answered (greedy, 8 tokens)",
                              visible=False, interactive=False)
    with gr.Accordion("Batch: a CSV or one text per line", open=False):
        with gr.Row():
            upload = gr.File(label="CSV (columns named as the inputs) or .txt, up to 1 MB",
                             file_types=list(UPLOAD_TYPES), type="filepath")
            lines = gr.Textbox(label="Or paste one text per line (pair tasks: a tab "
                               "between the two texts)", lines=5,
                               max_length=MAX_UPLOAD_BYTES)
        with gr.Row():
            run_batch = gr.Button("Classify all")
            stop_batch = gr.Button("Stop", variant="stop")
        table = gr.Dataframe(no_results(engine, model.value)[0], label="Results", interactive=False,
                             wrap=True)
        with gr.Row():
            chart = gr.BarPlot(x="label", y="rows", title="Label distribution")
            download = gr.File(label="Download results", visible=False,
                               elem_id="class-download")

    @common.engine_errors
    def relabel(key):
        fields = api.check_model(key, CLASSIFY, LABEL_SCORE, engine=engine).inputs
        return (gr.Textbox(label=FIELD_LABELS[fields[0]]),
                gr.Textbox(label=FIELD_LABELS[fields[-1]], visible=len(fields) > 1),
                gr.Textbox(visible=False))

    fn = common.bind(classify, engine)
    free_fn = common.bind(free_answer, engine)
    for event, exposure in ((run.click, dict(api_name="classify")),
                            (text.submit, dict(api_visibility="private"))):
        event(fn, [text, model, second], [labels, banner], concurrency_id="classify",
              **exposure).success(free_fn, [text, model], free, api_visibility="private",
                          concurrency_id="classify")
    batch = run_batch.click(common.bind(classify_batch, engine), [upload, lines, model],
                            [table, chart, download, banner], api_name="classify_batch",
                            concurrency_id="classify")
    stop_batch.click(None, cancels=[batch], api_visibility="private")
    # Another classifier: the previous one's batch stops and its results go.
    model.change(relabel, model, [text, second, free], api_visibility="private")
    model.change(common.bind(no_results, engine), model, [table, chart, download],
                 cancels=[batch], api_visibility="private")
    # The tab's choices again when it is opened (app.py): models fine-tuned since.
    return lambda: gr.Dropdown(choices=models(engine)), None, model
