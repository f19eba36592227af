"""Text generation tab: TeenyTinyLlama streaming a continuation."""

from __future__ import annotations

import functools
import time

import gradio as gr

from inference import formats, generation
from inference.registry import GENERATE, REGISTRY, by_task

from . import common

# The 160m card's widget examples.
EXAMPLES = [
    "A PUCRS é uma universidade ",
    "A muitos anos atrás, em uma galáxia muito distante, vivia uma raça de",
    "Em meio a um escândalo, a frente parlamentar pediu ao Senador Silva para",
]
MODELS = [(s.title, s.key) for s in by_task(GENERATE)]


@common.engine_errors
def generate(engine, text, model_key="ttl-160m", revision="main", temperature=0.2,
             top_k=20, top_p=0.2, repetition_penalty=1.2, max_new_tokens=150,
             greedy=False, seed=None, progress=gr.Progress(track_tqdm=True)):
    """Stream a continuation of `text`; yields (text, figures, banner)."""
    common.check_key(model_key, GENERATE)
    text = common.check_text(text, "prompt")
    m = common.load(engine, model_key, revision, progress)
    try:
        s = generation.Sampling.from_defaults(
            m.spec.defaults, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
            do_sample=not greedy, seed=seed)
    except ValueError as exc:
        raise common.error_message(exc) from None
    ids = formats.encode(m.spec.prompt_format, m.tokenizer, {"text": text})
    ids, dropped = generation.fit_context(ids, m.spec.max_input_tokens, s.max_new_tokens, keep_first=1)
    cut = (f"⚠️ The prompt was cut by {dropped} tokens from the left to fit the "
           f"{m.spec.max_input_tokens}-token context. ") if dropped else ""
    banner = common.notice(m)
    start, first, out = time.perf_counter(), None, ""
    for piece in generation.stream(m, ids, s):
        first = first or time.perf_counter() - start
        out += piece
        yield out, cut + f"Generating on {m.label}…", banner
    elapsed = time.perf_counter() - start
    new = len(m.tokenizer(out, add_special_tokens=False)["input_ids"]) if out else 0
    rate = new / (elapsed - first) if first and elapsed > first and new > 1 else 0.0
    figures = (f"{cut}**{len(ids)}** prompt tokens · **{new}** new tokens · "
               f"first token after **{(first or elapsed):.2f} s** · **{rate:.1f}** tokens/s · "
               f"{m.label}")
    yield out, figures, banner


def build(engine) -> None:
    d = REGISTRY["ttl-160m"].defaults
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=4, value=EXAMPLES[0], max_length=common.MAX_TEXT_CHARS)
            with gr.Row():
                run = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            gr.Examples(EXAMPLES, inputs=prompt, label="Examples from the model card")
            banner = gr.Markdown(visible=False, elem_classes="notice")
            output = gr.Textbox(label="Continuation", lines=10, interactive=False, elem_id="gen-output",
                                buttons=["copy"])
            figures = gr.Markdown(elem_classes="figures")
        with gr.Column(scale=2):
            model = gr.Dropdown(MODELS, value="ttl-160m", label="Model")
            revision = gr.Dropdown(list(REGISTRY["ttl-160m"].revisions), value="main",
                                   label="Checkpoint (training step)")
            temperature = gr.Slider(0.01, 2.0, d["temperature"], step=0.01, label="Temperature")
            top_k = gr.Slider(0, 200, d["top_k"], step=1, label="Top-k (0 = off)")
            top_p = gr.Slider(0.01, 1.0, d["top_p"], step=0.01, label="Top-p")
            rep = gr.Slider(1.0, 2.0, d["repetition_penalty"], step=0.05, label="Repetition penalty")
            max_new = gr.Slider(1, generation.MAX_NEW_TOKENS_CAP, d["max_new_tokens"], step=1,
                                label="Max new tokens")
            greedy = gr.Checkbox(False, label="Greedy (no sampling)")
            seed = gr.Number(None, precision=0, minimum=0, maximum=generation.MAX_SEED,
                             label="Seed (empty = random)")

    fn = functools.partial(generate, engine)
    model.change(lambda k: gr.Dropdown(choices=list(REGISTRY[k].revisions), value="main"),
                 model, revision, api_visibility="private")
    event = run.click(fn, [prompt, model, revision, temperature, top_k, top_p, rep, max_new,
                           greedy, seed], [output, figures, banner], api_name="generate",
                      concurrency_id="generate")
    submit = prompt.submit(fn, [prompt, model, revision, temperature, top_k, top_p, rep,
                                max_new, greedy, seed], [output, figures, banner],
                           api_visibility="private", concurrency_id="generate")
    stop.click(None, cancels=[event, submit], api_visibility="private")
