"""Instruction chat tab: Aira-2 answering in a chatbot."""

from __future__ import annotations

import functools

import gradio as gr

from inference import chat, generation
from inference.registry import REGISTRY

from . import common

KEY = "aira-2-124m"
# The Aira-2-portuguese-124M card's widget questions.
EXAMPLES = [
    "Você pode me explicar o que é Aprendizagem de Máquina?",
    "Você sabe alguma coisa sobre Ética das Virtudes?",
    "Como eu posso fazer a minha namorada feliz?",
]


def _pairs(history) -> list[chat.Turn]:
    """Chatbot messages to (question, answer) turns; malformed entries from
    API clients are skipped rather than trusted."""
    turns, question = [], None
    for msg in history or []:
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            continue
        if msg.get("role") == "user":
            question = msg["content"]
        elif msg.get("role") == "assistant" and question is not None:
            turns.append((question, msg["content"]))
            question = None
    return turns


@common.engine_errors
def respond(engine, message, history=None, use_history=False, temperature=0.2, top_k=30,
            top_p=0.3, repetition_penalty=1.2, max_new_tokens=200, seed=None,
            progress=gr.Progress(track_tqdm=True)):
    """Stream Aira's answer to `message`; yields (chat history, banner)."""
    message = common.check_text(message, "question")
    m = common.load(engine, KEY, progress=progress)
    try:
        s = generation.Sampling.from_defaults(
            m.spec.defaults, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens, seed=seed)
    except ValueError as exc:
        raise common.error_message(exc) from None
    history = [h for h in (history or []) if isinstance(h, dict)]
    turns = _pairs(history) if use_history else []
    shown = history + [{"role": "user", "content": message},
                       {"role": "assistant", "content": ""}]
    banner = common.notice(m)
    for piece in chat.answer(m, message, s, turns):
        shown[-1]["content"] += piece
        yield shown, banner
    if not shown[-1]["content"].strip():
        shown[-1]["content"] = "…"   # the model ended at once; say so rather than show nothing
    yield shown, banner


def build(engine) -> None:
    d = REGISTRY[KEY].defaults
    banner = gr.Markdown(visible=False, elem_classes="notice")
    with gr.Row():
        with gr.Column(scale=3):
            bot = gr.Chatbot(label="Aira-2", height=420, buttons=["copy", "copy_all"])
            msg = gr.Textbox(label="Your question", placeholder="Pergunte algo em português…",
                             max_length=common.MAX_TEXT_CHARS)
            with gr.Row():
                send = gr.Button("Send", variant="primary")
                stop = gr.Button("Stop", variant="stop")
                clear = gr.Button("Clear")
            gr.Examples(EXAMPLES, inputs=msg, label="Examples from the model card")
        with gr.Column(scale=2):
            use_history = gr.Checkbox(False, label="Send earlier turns too (Aira is single-turn)")
            temperature = gr.Slider(0.01, 2.0, d["temperature"], step=0.01, label="Temperature")
            top_k = gr.Slider(0, 200, d["top_k"], step=1, label="Top-k (0 = off)")
            top_p = gr.Slider(0.01, 1.0, d["top_p"], step=0.01, label="Top-p")
            rep = gr.Slider(1.0, 2.0, d["repetition_penalty"], step=0.05, label="Repetition penalty")
            max_new = gr.Slider(1, 512, d["max_new_tokens"], step=1, label="Max new tokens")
            seed = gr.Number(None, precision=0, minimum=0, maximum=generation.MAX_SEED,
                             label="Seed (empty = random)")

    fn = functools.partial(respond, engine)
    inputs = [msg, bot, use_history, temperature, top_k, top_p, rep, max_new, seed]
    sent = send.click(fn, inputs, [bot, banner], api_name="chat", concurrency_id="chat")
    submitted = msg.submit(fn, inputs, [bot, banner], api_visibility="private",
                           concurrency_id="chat")
    for event in (sent, submitted):
        event.then(lambda: "", None, msg, api_visibility="private")
    stop.click(None, cancels=[sent, submitted], api_visibility="private")
    clear.click(lambda: [], None, bot, api_visibility="private")
