"""Classification tab: TeenyTinyLlama's fine-tuned classifiers and the
TinyLlama tweet-sentiment adapter."""

from __future__ import annotations

import functools

import gradio as gr

from inference import classification
from inference.registry import CLASSIFY, LABEL_SCORE, REGISTRY, by_task

from . import common

# The TeenyTinyLlama-160m-IMDB card's two examples.
EXAMPLES = [
    "Esqueceram de mim 2 é um dos melhores filmes de natal de todos os tempos.",
    "Esqueceram de mim 2 é o pior filme da franquia inteira.",
]
MODELS = [(s.title, s.key) for s in by_task(CLASSIFY, LABEL_SCORE)]


@common.engine_errors
def classify(engine, text, model_key="ttl-160m-imdb", second_text="",
             progress=gr.Progress(track_tqdm=True)):
    """Label probabilities for `text` (and `second_text` for the pair tasks:
    AgNews title/text, FaQuAD-NLI question/answer, Assin2 premise/hypothesis)."""
    common.check_key(model_key, CLASSIFY, LABEL_SCORE)
    m = common.load(engine, model_key, progress=progress)
    fields = m.spec.inputs
    values = [common.check_text(text, fields[0])]
    if len(fields) > 1:
        values.append(common.check_text(second_text, fields[1]))
    if m.spec.task == LABEL_SCORE:
        probs = classification.score_labels(m, values[0])
    else:
        probs = classification.classify(m, [dict(zip(fields, values))])[0]
    return probs, common.notice(m)


def build(engine) -> None:
    banner = gr.Markdown(visible=False, elem_classes="notice")
    with gr.Row():
        with gr.Column(scale=3):
            model = gr.Dropdown(MODELS, value="ttl-160m-imdb", label="Classifier")
            text = gr.Textbox(label="Text", lines=4, value=EXAMPLES[0],
                              max_length=common.MAX_TEXT_CHARS)
            second = gr.Textbox("", label="Second text", lines=2, visible=False,
                                max_length=common.MAX_TEXT_CHARS)
            run = gr.Button("Classify", variant="primary")
            gr.Examples(EXAMPLES, inputs=text, label="Examples from the IMDB model card")
        with gr.Column(scale=2):
            labels = gr.Label(label="Label probabilities", num_top_classes=4)

    def relabel(key):
        fields = REGISTRY[key].inputs
        return (gr.Textbox(label=fields[0].capitalize()),
                gr.Textbox(label=fields[-1].capitalize(), visible=len(fields) > 1))

    model.change(relabel, model, [text, second], api_visibility="private")
    fn = functools.partial(classify, engine)
    run.click(fn, [text, model, second], [labels, banner], api_name="classify",
              concurrency_id="classify")
    text.submit(fn, [text, model, second], [labels, banner], api_visibility="private",
                concurrency_id="classify")
