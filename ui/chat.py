"""Instruction chat tab: Aira-2 answering in a chatbot, optionally best-of-n
with its authors' reward and toxicity models."""

from __future__ import annotations

import contextlib
import html

import gradio as gr

from inference import api
from inference.registry import CHAT, REGISTRY, by_task

from . import common

MODELS = [(s.title, s.key) for s in by_task(CHAT)]   # the registry's chat models
KEY = MODELS[0][1]
# The Aira-2-portuguese-124M card's widget questions.
EXAMPLES = [
    "Você pode me explicar o que é Aprendizagem de Máquina?",
    "Você sabe alguma coisa sobre Ética das Virtudes?",
    "Como eu posso fazer a minha namorada feliz?",
]
COLUMNS = ["#", "Answer", "Reward",
           f"Toxicity score (kept if ≥ {api.TOXICITY_THRESHOLD:g})", "Chosen"]


def _text(content) -> str | None:
    """A message's text: a string from API clients, a list of content parts
    (`{"type": "text", "text": ...}`) from the Chatbot; None for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    return None


def _messages(history, shown: bool = False) -> list[dict]:
    """Chatbot or client history as plain {"role", "content": str} messages;
    malformed entries are dropped rather than trusted. `shown`: the
    Chatbot's own value, whose text `_display` escaped."""
    if history is not None and not isinstance(history, list):
        raise common.refused("The history must be a list of {role, content} messages.")
    out = []
    for msg in history or []:
        text = _text(msg.get("content")) if isinstance(msg, dict) else None
        if text is not None and msg.get("role") in ("user", "assistant"):
            out.append({"role": msg["role"], "content": html.unescape(text) if shown else text})
    return out


def _table(cands, best: int | None) -> list[list]:
    return [[i + 1, c.text, c.reward, c.toxicity, "✓" if i == best else ""]
            for i, c in enumerate(cands)]


def _display(messages: list[dict]) -> list[dict]:
    """Messages as the Chatbot shows them: as text. The Chatbot renders HTML
    (its sanitiser keeps images and forms), so a typed or generated
    `<img src=...>` would fetch from anywhere and a `<form>` would be drawn."""
    return [{"role": m["role"], "content": html.escape(m["content"], quote=False)}
            for m in messages]


def respond(engine, message, history=None, use_history=False, temperature=0.2, top_k=30,
            top_p=0.3, repetition_penalty=1.2, max_new_tokens=200, seed=None, n=1,
            model_key=KEY, progress=gr.Progress(track_tqdm=True)):
    """Stream the chat model's answer to `message` into the page's Chatbot
    (whose history holds what `_display` made); yields (chat history,
    banner, candidates table)."""
    for shown, banner, table in _answer(engine, message, _messages(history, shown=True),
                                        use_history, temperature, top_k, top_p,
                                        repetition_penalty, max_new_tokens, seed, n, model_key,
                                        progress):
        yield _display(shown), banner, table


@common.engine_errors
def _answer(engine, message, history, use_history, temperature, top_k, top_p,
            repetition_penalty, max_new_tokens, seed, n, model_key, progress):
    """The answer to `message` after `history` (plain messages), as plain
    messages. With n > 1 the candidates stream (one of them on the page at
    a time), then the best one replaces them."""
    earlier = history if use_history else []
    events = api.chat(engine, model_key, earlier + [{"role": "user", "content": message}], n=n,
                      status=common.status(progress), temperature=temperature, top_k=top_k,
                      top_p=top_p, repetition_penalty=repetition_penalty,
                      max_new_tokens=max_new_tokens, seed=seed)
    with contextlib.closing(events):
        started = next(events)
        shown = history + [{"role": "user", "content": message},
                           {"role": "assistant", "content": ""}]
        notes = [started.notice] if started.notice else []

        def banner():   # the stand-in and missing-scorer notices gathered so far
            return common.notice("\n\n".join(notes))

        texts = [""] * len(started.samplings)
        # The candidates may all be written at once, their pieces
        # interleaved: one is shown until a whole round passes without it
        # (it has ended), then the one whose piece came.
        on_page, others = 0, 0
        for event in events:
            if isinstance(event, api.Answer):
                break
            texts[event.index] += event.text
            others = 0 if event.index == on_page else others + 1
            if others and others <= len(texts):   # not on the page: no update
                continue
            on_page, others = event.index, 0
            head = f"(candidate {on_page + 1} of {n}…)\n\n" if len(texts) > 1 else ""
            shown[-1]["content"] = head + texts[on_page]
            yield shown, banner(), []
    answer = event
    notes += answer.notes
    if answer.best is None:
        shown[-1]["content"] = (f"All {len(texts)} candidates scored below "
                                f"{api.TOXICITY_THRESHOLD:g} on ToxiGuardrailPT (flagged as toxic), "
                                "so none is given as the answer. They are listed under "
                                "“All candidates”.")
    else:
        # An empty answer (the model ended at once) is said rather than shown blank.
        shown[-1]["content"] = answer.text or "…"
    many = len(answer.candidates) > 1
    yield shown, banner(), _table(answer.candidates, answer.best) if many else []


def regenerate(engine, history, use_history, temperature, top_k, top_p, repetition_penalty,
               max_new_tokens, seed, n, model_key, retry: gr.RetryData,
               progress=gr.Progress(track_tqdm=True)):
    """The chatbot's retry: answer the same question again, from that turn."""
    history = _messages(history, shown=True)
    index = retry.index if isinstance(retry.index, int) else retry.index[0]
    if not 0 <= index < len(history) or history[index]["role"] != "user":
        raise common.refused("There is no question to answer again.")
    for shown, banner, table in _answer(
            engine, history[index]["content"], history[:index], use_history, temperature, top_k,
            top_p, repetition_penalty, max_new_tokens, seed, n, model_key, progress):
        yield _display(shown), banner, table


def undo(history, data: gr.UndoData):
    """The chatbot's undo: drop the last exchange and put the question back."""
    history = _messages(history, shown=True)
    index = data.index if isinstance(data.index, int) else data.index[0]
    if not 0 <= index < len(history):
        return _display(history), ""
    question = history[index]["content"] if history[index]["role"] == "user" else ""
    return _display(history[:index]), question


def answer_api(engine, message, history=None, **settings) -> str:
    """The final answer to `message` (earlier turns are used when `history` is given)."""
    shown = []
    for shown, _, _ in _answer(
            engine, message, _messages(history), bool(history), settings["temperature"],
            settings["top_k"], settings["top_p"], settings["repetition_penalty"],
            settings["max_new_tokens"], settings["seed"], settings["n"],
            settings.get("model_key", KEY), None):
        pass
    return shown[-1]["content"]


def build(engine) -> None:
    d = REGISTRY[KEY].defaults
    banner = gr.Markdown(visible=False, elem_classes="notice")
    with gr.Row():
        with gr.Column(scale=3):
            # Plain text: what the model wrote, never markup (see _display).
            bot = gr.Chatbot(label="Aira-2", height=420, elem_id="chat-bot", render_markdown=False,
                             buttons=["copy", "copy_all"])
            msg = gr.Textbox(label="Your question", placeholder="Pergunte algo em português…",
                             max_length=common.MAX_TEXT_CHARS, elem_id="chat-msg")
            with gr.Row():
                send = gr.Button("Send", variant="primary")
                stop = gr.Button("Stop", variant="stop")
                clear = gr.Button("Clear", elem_id="chat-clear")
            gr.Examples(EXAMPLES, inputs=msg, label="Examples from the model card")
            with gr.Accordion("All candidates (best-of-n)", open=False):
                table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True,
                                     elem_id="chat-candidates")
        with gr.Column(scale=2):
            model = gr.Dropdown(MODELS, value=KEY, label="Model", visible=len(MODELS) > 1)
            use_history = gr.Checkbox(False, label="Send earlier turns too (Aira is single-turn)")
            n = gr.Slider(1, api.MAX_CANDIDATES, 1, step=1, label="Candidates (best-of-n)",
                          info="More than 1: each is scored by RewardModelPT, those "
                               "ToxiGuardrailPT scores below 5 are dropped, the best is shown.")
            temperature, top_k, top_p, rep, max_new = common.sampling_controls(d, 512)
            seed = gr.Number(-1, precision=0, minimum=-1, maximum=api.MAX_SEED,
                             label="Seed (−1 = random)")

    settings = [use_history, temperature, top_k, top_p, rep, max_new, seed, n, model]
    outputs = [bot, banner, table]
    fn = common.bind(respond, engine)
    sent = send.click(fn, [msg, bot, *settings], outputs, api_visibility="private",
                      concurrency_id="chat")
    submitted = msg.submit(fn, [msg, bot, *settings], outputs, api_visibility="private",
                           concurrency_id="chat")
    for event in (sent, submitted):
        event.then(lambda: "", None, msg, api_visibility="private")

    # Not a functools.partial: Gradio finds gr.RetryData by the type hints of
    # a plain function.
    def on_retry(history, use_history, temperature, top_k, top_p, repetition_penalty,
                 max_new_tokens, seed, n, model_key, retry: gr.RetryData,
                 progress=gr.Progress(track_tqdm=True)):
        yield from regenerate(engine, history, use_history, temperature, top_k, top_p,
                              repetition_penalty, max_new_tokens, seed, n, model_key, retry,
                              progress)

    retried = bot.retry(common.on_gpu(engine, on_retry), [bot, *settings], outputs,
                        api_visibility="private",
                        concurrency_id="chat")
    bot.undo(undo, bot, [bot, msg], api_visibility="private")
    stop.click(None, cancels=[sent, submitted, retried], api_visibility="private")
    # Clearing during an answer also stops it, or the stream would refill the
    # chat; the chat is emptied once the cancel is done, not alongside it, or
    # an update already on its way can land after the clear.
    clear.click(None, cancels=[sent, submitted, retried], api_visibility="private").then(
        lambda: ([], []), None, [bot, table], api_visibility="private")
    bot.clear(lambda: [], None, table, api_visibility="private")

    def chat(message: str, history: list[dict] | None = None,
                 temperature: float = d["temperature"], top_k: int = d["top_k"],
                 top_p: float = d["top_p"], repetition_penalty: float = d["repetition_penalty"],
                 max_new_tokens: int = d["max_new_tokens"], seed: int | None = None,
                 n: int = 1, model: str = KEY) -> str:
        """Ask Aira-2 (a small Portuguese instruction-following model) a
        question and get its answer.

        Args:
            message: the question, in Portuguese.
            history: earlier turns as [{"role": "user" or "assistant", "content": text}], oldest first; none for a single question.
            temperature: sampling temperature, 0.01 to 5 (the card: 0.2).
            top_k: keep the k most likely tokens, 0 = off (the card: 30).
            top_p: keep the most likely tokens up to this mass (the card: 0.3).
            repetition_penalty: 1 = off (the card: 1.2).
            max_new_tokens: the answer's length limit in tokens, 1 to 1024.
            seed: a seed for a reproducible answer; none or -1 for a random one.
            n: best of n: sample n answers (up to 4), rank them with RewardModelPT and drop those ToxiGuardrailPT flags.
            model: the chat model (its registry key).
        """
        return answer_api(engine, message, history, temperature=temperature, top_k=top_k,
                          top_p=top_p, repetition_penalty=repetition_penalty,
                          max_new_tokens=max_new_tokens, seed=seed, n=n, model_key=model)

    gr.api(common.on_gpu(engine, chat), api_name="chat", concurrency_id="chat")
