"""Text generation tab: TeenyTinyLlama streaming 1 to 4 continuations side by
side, "Why this token?" and the perplexity of a pasted text."""

from __future__ import annotations

import contextlib
import time

import gradio as gr

from inference import api
from inference.registry import GENERATE, REGISTRY, by_task

from . import common

# The 160m card's widget examples.
EXAMPLES = [
    "A PUCRS é uma universidade ",
    "A muitos anos atrás, em uma galáxia muito distante, vivia uma raça de",
    "Em meio a um escândalo, a frente parlamentar pediu ao Senador Silva para",
]
MODELS = [(s.title, s.key) for s in by_task(GENERATE)]
# Every checkpoint of every model, for the API's schema: a client sees the
# page as first built, so the revision input declares them all. The page
# narrows the list to the chosen model's.
REVISIONS = list(dict.fromkeys(r for s in by_task(GENERATE) for r in s.revisions))
MAX_COMPLETIONS = api.MAX_COMPLETIONS
RUN_EVERY_S = 0.25   # how stale "Why this token?" can be mid-stream (the run is resent whole)

# Colour classes for token probabilities and surprise, most confident first.
PROB_BANDS = [(0.9, "p ≥ 0.9", "#22c55e"), (0.5, "p 0.5–0.9", "#a3e635"),
              (0.1, "p 0.1–0.5", "#fb923c"), (0.0, "p < 0.1", "#ef4444")]
SURPRISE_BANDS = [(1.0, "< 1 bit", "#22c55e"), (4.0, "1–4 bits", "#a3e635"),
                  (8.0, "4–8 bits", "#fb923c"), (float("inf"), "≥ 8 bits", "#ef4444")]


def prob_band(p: float) -> str:
    return next(name for lo, name, _ in PROB_BANDS if p >= lo)


def surprise_band(bits: float) -> str:
    return next(name for hi, name, _ in SURPRISE_BANDS if bits < hi) if bits < float("inf") \
        else SURPRISE_BANDS[-1][1]


def token_cell(text: str) -> str:
    """A token as a table cell shows it: quoted, so that its leading space
    or a newline can be seen (the Benchmarks tab shows tokens this way too)."""
    return repr(text)


def decoding_time(spans: list[tuple[float, float]]) -> float:
    """Seconds in which at least one completion was decoding, from each
    one's (first token, last token): completions decoded together count
    once, one after the other each."""
    total, reach = 0.0, float("-inf")
    for first, end in sorted(spans):
        total += max(0.0, end - max(first, reach))
        reach = max(reach, end)
    return total


def figures(started, runs: list[dict]) -> str:
    """The line under the outputs: sizes, speed, device. Token counts come
    from the generated ids, not from re-tokenizing the text."""
    new = sum(len(r["ids"]) for r in runs)
    first = next((r["first"] for r in runs if r["first"] is not None), None)
    decoded = sum(max(len(r["ids"]) - 1, 0) for r in runs)
    decode_s = decoding_time([(r["first"], r["end"]) for r in runs if r["first"] is not None])
    rate = f"**{decoded / decode_s:.1f}** tokens/s" if decode_s > 0 and decoded else "– tokens/s"
    cut = (f"⚠️ The prompt was cut by **{started.dropped}** tokens from the left to fit the "
           f"{started.context}-token context. ") if started.dropped else ""
    ttft = f"**{first:.2f} s**" if first is not None else "–"
    seeds = ", ".join(str(s.seed) for s in started.samplings[:len(runs)]) \
        if started.samplings[0].do_sample else "greedy"
    return (f"{cut}**{len(started.prompt)}** prompt tokens · **{new}** new tokens · "
            f"first token after {ttft} · {rate} · {started.label} · seed {seeds}")


@common.engine_errors
def generate(engine, text, model_key="ttl-160m", revision="main", temperature=0.2,
             top_k=20, top_p=0.2, repetition_penalty=1.2, max_new_tokens=150,
             greedy=False, seed=None, completions=1, progress=gr.Progress(track_tqdm=True)):
    """Continue a Portuguese text with TeenyTinyLlama, streaming 1 to 4
    completions (completion k uses seed + k - 1). Returns the four
    completion texts (unused ones empty), a line of figures (tokens, speed,
    device, seeds), the stand-in banner and the run for "Why this token?".

    Args:
        text: the prompt to continue, in Portuguese.
        model_key: "ttl-160m" or "ttl-460m".
        revision: a training checkpoint of that model, "main" or e.g. "step100000" (one it lacks is refused with its list).
        temperature: sampling temperature, 0.01 to 5 (the card: 0.2).
        top_k: keep the k most likely tokens, 0 = off (the card: 20).
        top_p: keep the most likely tokens up to this mass (the card: 0.2).
        repetition_penalty: 1 = off (the card: 1.2).
        max_new_tokens: tokens to generate, 1 to 1024.
        greedy: always take the most likely token (no sampling).
        seed: the seed of completion 1; -1 draws one (shown in the figures).
        completions: how many completions, 1 to 4.
    """
    if not api.check_text(text, "prompt", allow_empty=True).strip():
        gr.Warning("Type a prompt first: the model continues your text.")
        yield *[""] * MAX_COMPLETIONS, "✍️ Type a prompt to start.", gr.Markdown(visible=False), None
        return
    completions = api.check_count(completions, MAX_COMPLETIONS, "Completions")
    events = api.generate(
        engine, model_key, text, revision, n=completions, status=common.status(progress),
        temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
        do_sample=not greedy, seed=seed)
    # closing(): a Stop closes this generator, and the work must end with it.
    with contextlib.closing(events):
        started = next(events)
        banner = common.notice(started.notice)
        texts = [""] * MAX_COMPLETIONS
        runs: list[dict] = []   # times from the request's start: the completions run together
        start = time.perf_counter()
        sent = shown = -1.0     # the page and the run go out with a completion's first piece
        for piece in events:
            begins = piece.index >= len(runs)
            while len(runs) <= piece.index:
                runs.append(dict(ids=[], drawn=[], first=None, end=None))
            r, now = runs[piece.index], time.perf_counter() - start
            r["first"] = r["first"] if r["first"] is not None else now
            r["ids"], r["drawn"], r["end"] = piece.ids, piece.drawn, now
            texts[piece.index] += piece.text
            # n completions bring n times the pieces: the page still gets ~25 updates a second.
            if not begins and now - sent < api.UPDATE_EVERY_S:
                continue
            fresh = begins or now - shown >= RUN_EVERY_S   # the last update sends it whole
            sent, shown = now, now if fresh else shown
            yield (*texts, figures(started, runs), banner,
                   run_record(started, runs) if fresh else gr.skip())
    yield *texts, figures(started, runs), banner, run_record(started, runs)


def run_record(started, runs: list[dict]) -> dict:
    """What "Why this token?" needs, as plain data: the prompt's ids and each
    generated token with the probability it was drawn with and the top of
    that distribution. The API returns it too."""
    return {"model": started.key, "revision": started.revision, "prompt": started.prompt,
            "completions": [{"ids": r["ids"], "drawn": [[d.id, d.prob, [list(t) for t in d.top]]
                                                        for d in r["drawn"]]} for r in runs]}


@common.engine_errors
def explain(engine, run, which=1):
    """Colour each generated token of completion `which` by its probability
    and list the top alternatives (see inference.analysis)."""
    if not isinstance(run, dict) or not run.get("completions"):
        raise common.refused("Generate some text first.", title="Nothing to explain")
    which = api.check_count(which, MAX_COMPLETIONS, "Completions")
    done = run["completions"]
    if which > len(done):
        raise common.refused(f"There are only {len(done)} completions.", title="Nothing to explain")
    infos = api.explain(engine, run.get("model"), run.get("revision"), run.get("prompt"),
                        done[which - 1].get("drawn"))
    spans = [(t.text, prob_band(t.prob)) for t in infos]
    table = [[i + 1, token_cell(t.text), round(t.prob, 4),
              " · ".join(f"{token_cell(a)} {p:.3f}" for a, p in t.alternatives)]
             for i, t in enumerate(infos)]
    return spans, table


@common.engine_errors
def perplexity(engine, text, model_key="ttl-160m", revision="main",
               progress=gr.Progress(track_tqdm=True)):
    """The perplexity of a text under TeenyTinyLlama, and each token with
    its surprise in bits (-log2 p).

    Args:
        text: the text to score.
        model_key: "ttl-160m" or "ttl-460m".
        revision: a training checkpoint of that model, "main" or e.g. "step100000" (one it lacks is refused with its list).
    """
    scored = api.perplexity(engine, model_key, text, revision, status=common.status(progress))
    p, context = scored.perplexity, REGISTRY[model_key].max_input_tokens
    cut = (f" Only the first {context} tokens were scored "
           f"({p.dropped} more did not fit the context).") if p.dropped else ""
    summary = (f"Perplexity **{p.value:.2f}** over **{len(p.tokens)}** tokens "
               f"under {REGISTRY[model_key].title} ({scored.revision}, {scored.label}).{cut}")
    return summary, [(t.text, surprise_band(t.surprise_bits)) for t in p.tokens]


def build(engine) -> None:
    d = REGISTRY["ttl-160m"].defaults
    # The last run, as the API returns it too (a State output would break the
    # endpoint as an MCP tool). Sent four times a second while streaming, and
    # whenever a completion ends.
    run_state = gr.JSON(None, visible=False)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=4, value=EXAMPLES[0], max_length=common.MAX_TEXT_CHARS)
            with gr.Row():
                run = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            gr.Examples(EXAMPLES, inputs=prompt, label="Examples from the model card")
            banner = gr.Markdown(visible=False, elem_classes="notice")
            with gr.Row():
                outputs = [gr.Textbox(label=f"Completion {i + 1}", lines=10, interactive=False,
                                      elem_id="gen-output" if i == 0 else f"gen-output-{i + 1}",
                                      buttons=["copy"], visible=i == 0)
                           for i in range(MAX_COMPLETIONS)]
            figures_md = gr.Markdown(elem_classes="figures", elem_id="gen-figures")
        with gr.Column(scale=2):
            model = gr.Dropdown(MODELS, value="ttl-160m", label="Model")
            # Custom values pass Gradio's own check too: the engine refuses a
            # checkpoint the model lacks with that model's list.
            revision = gr.Dropdown(REVISIONS, value="main", label="Checkpoint (training step)",
                                   allow_custom_value=True)
            temperature, top_k, top_p, rep, max_new = common.sampling_controls(
                d, api.MAX_NEW_TOKENS_CAP)
            greedy = gr.Checkbox(not d["do_sample"], label="Greedy (no sampling)")
            seed = gr.Number(-1, precision=0, minimum=-1, maximum=api.MAX_SEED,
                             label="Seed (−1 = random; completion k uses seed + k − 1)")
            # A slider, not a Radio: Gradio's schema types a Radio of numbers
            # as text, which API and MCP clients then cannot satisfy.
            # precision=0 makes the schema say integer and passes an int.
            completions = gr.Slider(1, MAX_COMPLETIONS, 1, step=1, precision=0,
                                    label="Completions side by side")
    with gr.Accordion("Why this token?", open=False):
        gr.Markdown("Each generated token coloured by the probability it had in the "
                    "distribution it was drawn from: the model's softmax after the repetition "
                    "penalty and, when sampling, temperature, top-k and top-p.")
        with gr.Row():
            which = gr.Radio(list(range(1, MAX_COMPLETIONS + 1)), value=1, label="Completion")
            why_btn = gr.Button("Why these tokens?")
        why = gr.HighlightedText(label="Token probabilities", show_legend=True,
                                 color_map={name: c for _, name, c in PROB_BANDS},
                                 elem_id="gen-why")
        alts = gr.Dataframe(headers=["#", "token", "probability", "top alternatives"],
                            label="Top alternatives per position", wrap=True)
    with gr.Accordion("Perplexity of a text", open=False):
        ppl_text = gr.Textbox(label="Text to score", lines=4, max_length=common.MAX_TEXT_CHARS)
        ppl_btn = gr.Button("Perplexity")
        ppl_md = gr.Markdown()
        ppl_tokens = gr.HighlightedText(label="Surprise per token (−log₂ p)", show_legend=True,
                                        color_map={name: c for _, name, c in SURPRISE_BANDS})

    # On load too: the page offers only the chosen model's checkpoints.
    gr.on(None, lambda k: gr.Dropdown(choices=list(REGISTRY[k].revisions), value="main"),
          model, revision, api_visibility="private")
    completions.change(lambda n: [gr.Textbox(visible=i < int(n)) for i in range(MAX_COMPLETIONS)],
                       completions, outputs, api_visibility="private")
    inputs = [prompt, model, revision, temperature, top_k, top_p, rep, max_new, greedy, seed,
              completions]
    outs = [*outputs, figures_md, banner, run_state]
    fn = common.bind(generate, engine)
    event = run.click(fn, inputs, outs, api_name="generate", concurrency_id="generate")
    submit = prompt.submit(fn, inputs, outs, api_visibility="private", concurrency_id="generate")
    stop.click(None, cancels=[event, submit], api_visibility="private")
    why_btn.click(common.bind(explain, engine), [run_state, which], [why, alts],
                  api_visibility="private")
    ppl_btn.click(common.bind(perplexity, engine), [ppl_text, model, revision],
                  [ppl_md, ppl_tokens], api_name="perplexity")
