"""Compare tab: one prompt streamed by 2 to 4 models or checkpoints side by
side, with each column's tokens/s and "Why this token?"; the training
timeline (a text's perplexity under every checkpoint, next to the published
per-step perplexities); and blind A/B votes with a leaderboard."""

from __future__ import annotations

import contextlib
import csv
import time

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from inference import api
from inference.registry import GENERATE, REGISTRY, by_task

from . import benchmarks, common, generation

MAX_COLUMNS = api.MAX_COLUMNS
MODELS = [(s.title, s.key) for s in by_task(GENERATE)]
# A line of the stand-ins' training page too, so that on stand-ins the
# timeline shows them learning it; any Portuguese text serves the real models.
TIMELINE_TEXT = "A lhama é um animal dos Andes, calmo e curioso, que vive em grupos nas montanhas."
TIMELINE_COLUMNS = ["checkpoint", "perplexity measured here", "published perplexity", "tokens"]
BOARD_COLUMNS = ["rank", "model@checkpoint", "rating", "matches", "wins", "ties", "losses"]
VOTES = [("A is better", "A"), ("Tie", "tie"), ("B is better", "B")]
MEASURED_COLOUR, PUBLISHED_COLOUR = benchmarks.OWN_COLOUR, "#1971c2"


# -- side by side --------------------------------------------------------------------
def figures(plan, cols: list[dict]) -> str:
    """Each column's figures, from its own pieces: new tokens, time to its
    first token and tokens/s after it."""
    lines = ["| column | new tokens | first token | tokens/s | on |", "| --- | --- | --- | --- | --- |"]
    for c in cols:
        decoded, span = max(len(c["ids"]) - 1, 0), (c["end"] or 0) - (c["first"] or 0)
        rate = f"**{decoded / span:.1f}**" if decoded and span > 0 else "–"
        first = f"{c['first']:.2f} s" if c["first"] is not None else "–"
        label = c["started"].label if c["started"] else "waiting…"
        lines.append(f"| {c['name']} | {len(c['ids'])} | {first} | {rate} | {label} |")
    seed = f"seed **{plan.seed}** for every column" if plan.seed is not None else "greedy"
    how = ("streamed at once, so each column's tokens/s is its share of the machine"
           if plan.together else f"⚠️ {plan.note}")
    return "\n".join(lines) + f"\n\n{seed} · {how}"


def run_record(cols: list[dict]) -> dict:
    """What "Why this token?" needs for each column, as plain data (as the
    generation tab's run, one per column)."""
    return {"columns": [{"model": c["started"].key, "revision": c["started"].revision,
                         "prompt": c["started"].prompt,
                         "completions": [generation.run_record(c["started"], [c])["completions"][0]]}
                        for c in cols if c["started"] is not None]}


def _stream(events):
    """The columns' texts as a compare or blind stream goes: yields (plan,
    columns) after each event. Times are each column's own, from its start."""
    with contextlib.closing(events):
        plan = next(events)
        cols = [dict(name=api.column_name(c), started=None, text="", ids=[], drawn=[], first=None,
                     end=None, t0=None) for c in plan.columns]
        yield plan, cols
        for item in events:
            if not isinstance(item, api.Column):   # a blind match's id
                yield plan, cols, item
                continue
            c, now = cols[item.index], time.perf_counter()
            if isinstance(item.event, api.Started):
                c["started"], c["t0"] = item.event, now
            else:
                c["text"] += item.event.text
                c["ids"], c["drawn"] = item.event.ids, item.event.drawn
                c["first"] = c["first"] if c["first"] is not None else now - c["t0"]
                c["end"] = now - c["t0"]
            yield plan, cols


def _settings(temperature, top_k, top_p, repetition_penalty, max_new_tokens, greedy, seed):
    return dict(temperature=temperature, top_k=top_k, top_p=top_p,
                repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                do_sample=not greedy, seed=seed)


def _banner(cols: list[dict]) -> gr.Markdown:
    notices = dict.fromkeys(c["started"].notice for c in cols if c["started"] and c["started"].notice)
    return common.notice("\n\n".join(notices) or None)


@common.engine_errors
def compare(engine, text, columns=api.DEFAULT_COLUMNS, temperature=0.2, top_k=20, top_p=0.2,
            repetition_penalty=1.2, max_new_tokens=150, greedy=False, seed=None,
            progress=gr.Progress()):
    """Continue one Portuguese text with 2 to 4 TeenyTinyLlama models or
    training checkpoints side by side, with the same sampling and the same
    seed, streaming at the same time. Returns the four column texts (unused
    ones empty), a table of each column's figures (tokens, tokens/s), the
    stand-in banner and the run for "Why this token?".

    Args:
        text: the prompt every column continues, in Portuguese.
        columns: 2 to 4 distinct "model@checkpoint" names, e.g. ["ttl-160m@step100000", "ttl-160m@main", "ttl-460m@main"].
        temperature: sampling temperature, 0.01 to 5 (the card: 0.2).
        top_k: keep the k most likely tokens, 0 = off (the card: 20).
        top_p: keep the most likely tokens up to this mass (the card: 0.2).
        repetition_penalty: 1 = off (the card: 1.2).
        max_new_tokens: tokens each column generates, 1 to 1024.
        greedy: always take the most likely token (no sampling).
        seed: the seed every column uses; -1 draws one (shown in the figures).
    """
    events = api.compare(engine, text, columns, status=common.status(progress),
                         **_settings(temperature, top_k, top_p, repetition_penalty,
                                     max_new_tokens, greedy, seed))
    shown, labelled = 0.0, False
    for plan, cols in _stream(events):
        boxes = [c["text"] for c in cols] + [""] * (MAX_COLUMNS - len(cols))
        if not labelled:   # each box named for its column once; then plain text (the API's)
            labelled = True
            boxes = [gr.Textbox(value=t, label=cols[i]["name"] if i < len(cols) else
                                f"Column {i + 1}", visible=i < len(cols))
                     for i, t in enumerate(boxes)]
        now = time.perf_counter()
        fresh = now - shown >= generation.RUN_EVERY_S
        shown = now if fresh else shown
        yield *boxes, figures(plan, cols), _banner(cols), run_record(cols) if fresh else gr.skip()
    texts = [c["text"] for c in cols] + [""] * (MAX_COLUMNS - len(cols))
    yield *texts, figures(plan, cols), _banner(cols), run_record(cols)


@common.engine_errors
def explain(engine, run, which=1):
    """"Why this token?" for column `which` (see ui.generation.explain)."""
    if not isinstance(run, dict) or not run.get("columns"):
        raise common.refused("Compare some columns first.", title="Nothing to explain")
    which = api.check_count(which, MAX_COLUMNS, "The column")
    if which > len(run["columns"]):
        raise common.refused(f"There are only {len(run['columns'])} columns.",
                             title="Nothing to explain")
    return generation.explain(engine, run["columns"][which - 1], 1)


# -- training timeline ---------------------------------------------------------------
def published(key: str) -> dict[str, str]:
    """The authors' perplexity per checkpoint, as published (Benchmarks tab's reader)."""
    df = benchmarks.read(f"{key}-perplexity")
    return {f"step{s}": p for s, p in zip(df["step"], df["Perplexity"])}


def timeline_figure(key: str, points: list) -> go.Figure:
    """Measured points and the published ones, by checkpoint in training
    order, on a log scale (a stand-in's perplexities are thousands)."""
    order = api.training_order(key)
    given = published(key)
    fig = go.Figure()
    fig.add_scatter(x=[p.revision for p in points], y=[p.perplexity for p in points],
                    name="measured here, on your text", mode="lines+markers",
                    line=dict(color=MEASURED_COLOUR, width=3),
                    hovertemplate="%{x}: %{y:.2f}<extra>measured here</extra>")
    fig.add_scatter(x=list(given), y=[benchmarks.number(v) for v in given.values()],
                    text=list(given.values()), name="published (authors' evaluation)",
                    mode="lines+markers", line=dict(color=PUBLISHED_COLOUR, dash="dot", width=3),
                    hovertemplate="%{x}: %{text}<extra>published</extra>")
    values = [p.perplexity for p in points] + [benchmarks.number(v) for v in given.values()]
    finite = [v for v in values if 0 < v < float("inf")]
    # Over several decades, ticks at powers of ten only: plotly's 2s and 5s between them
    # read as the values themselves.
    decades = dict(dtick=1) if finite and max(finite) / min(finite) > 30 else {}
    return benchmarks.laid_out(
        fig, f"{REGISTRY[key].title}: perplexity along training",
        xaxis=dict(title="checkpoint", categoryorder="array", categoryarray=order,
                   range=[-0.5, len(order) - 0.5]),
        yaxis=dict(title="perplexity (log scale, lower is better)", type="log", **decades))


def timeline_rows(key: str, points: list) -> pd.DataFrame:
    given = published(key)
    return pd.DataFrame([[p.revision, f"{p.perplexity:.2f}", given.get(p.revision, "–"), p.tokens]
                         for p in points], columns=TIMELINE_COLUMNS)


@common.engine_errors
def timeline(engine, text, model_key="ttl-160m", progress=gr.Progress()):
    """The perplexity of a text under every training checkpoint of
    TeenyTinyLlama-160m or -460m, in training order, next to the authors'
    published per-step perplexities (a plot and a table: checkpoint,
    perplexity measured here, published perplexity, tokens). Checkpoints
    load one after another; results are cached.

    Args:
        text: the text to score, in Portuguese.
        model_key: "ttl-160m" (5 checkpoints) or "ttl-460m" (13 checkpoints).
    """
    api.check_model(model_key, GENERATE)
    order, points = api.training_order(model_key), []
    progress((0, len(order)), desc="Loading the first checkpoint…")

    def status(msg: str) -> None:
        progress((len(points), len(order)), desc=msg)
    for point in api.timeline(engine, text, model_key, status=status):
        points.append(point)
        progress((len(points), len(order)), desc=f"{point.revision}: {point.perplexity:.2f}")
        yield (timeline_figure(model_key, points), timeline_rows(model_key, points),
               timeline_summary(model_key, points, len(order)))


def timeline_summary(key: str, points: list, total: int) -> str:
    cached = sum(p.cached for p in points)
    whose = ("**stand-ins** (tiny weights, snapshots of one short training run: the shape of "
             "the curve means something, the numbers nothing)" if points[-1].is_standin
             else f"`{REGISTRY[key].hub_id}`")
    first, last = points[0], points[-1]
    trend = (f"from **{first.perplexity:.2f}** at {first.revision} to **{last.perplexity:.2f}** "
             f"at {last.revision}" if len(points) > 1 else f"**{first.perplexity:.2f}**")
    return (f"{len(points)} of {total} checkpoints of {REGISTRY[key].title}, {whose}, "
            f"on {last.label}: {trend}"
            + (f" ({cached} from the cache)" if cached else "") + ". The published points were "
            "measured on the authors' held-out corpus, not on your text: compare the shapes.")


# -- blind A/B -----------------------------------------------------------------------
@common.engine_errors
def blind_match(engine, text, pool=api.DEFAULT_COLUMNS, temperature=0.2, top_k=20, top_p=0.2,
                repetition_penalty=1.2, max_new_tokens=150, greedy=False, seed=None,
                progress=gr.Progress()):
    """A blind A/B match: two different models or checkpoints, drawn at
    random from `pool`, continue the text with the same settings and seed;
    their names stay hidden. Returns text A, text B, and the match id to
    send to `vote` once both have finished (a stopped match gets none).

    Args:
        text: the prompt both continue, in Portuguese.
        pool: the "model@checkpoint" names to draw two from (at least 2; empty: every checkpoint of every model).
        temperature: sampling temperature, 0.01 to 5 (the card: 0.2).
        top_k: keep the k most likely tokens, 0 = off (the card: 20).
        top_p: keep the most likely tokens up to this mass (the card: 0.2).
        repetition_penalty: 1 = off (the card: 1.2).
        max_new_tokens: tokens each side generates, 1 to 1024.
        greedy: always take the most likely token (no sampling).
        seed: the seed both sides use; -1 draws one.
    """
    events = api.blind_match(engine, text, pool or (), status=common.status(progress),
                             **_settings(temperature, top_k, top_p, repetition_penalty,
                                         max_new_tokens, greedy, seed))
    waiting = "*Vote once both answers have finished.*"
    for plan, cols, *issued in _stream(events):
        if issued:
            yield cols[0]["text"], cols[1]["text"], issued[0].match, \
                "*Which continues the text better? Vote below; the names are shown after.*"
        else:
            yield cols[0]["text"], cols[1]["text"], "", waiting


def standings_table(engine) -> pd.DataFrame:
    return pd.DataFrame([[i + 1, s.model, round(s.rating), s.matches, s.wins, s.ties, s.losses]
                         for i, s in enumerate(api.leaderboard(engine))], columns=BOARD_COLUMNS)


def board_file(table: pd.DataFrame) -> str:
    path = common.result_file("leaderboard.csv")
    table.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    return str(path)


@common.engine_errors
def leaderboard(engine):
    """The blind A/B leaderboard: every model@checkpoint voted on, rated by a
    Bradley–Terry fit of all votes on Elo's scale (1000 = even with an
    average newcomer), with its matches, wins, ties and losses; and the
    same table as a CSV file."""
    table = standings_table(engine)
    return table, board_file(table)


@common.engine_errors
def vote(engine, match, choice):
    """Vote on a blind A/B match this app issued (its id from blind_match),
    once: then its names are shown and the leaderboard is updated. Returns
    the reveal, the leaderboard and its CSV.

    Args:
        match: the match id blind_match returned.
        choice: "A", "B" or "tie".
    """
    if not (match or "").strip():
        raise common.refused("Start a blind match and wait for both answers first.",
                             title="Nothing to vote on")
    v = api.vote(engine, match, choice)
    said = {"A": f"**A** ({v.a}) won", "B": f"**B** ({v.b}) won", "tie": "a **tie**"}[v.winner]
    reveal = f"### A was **{v.a}**, B was **{v.b}**\nYour vote: {said}. Thank you!"
    table = standings_table(engine)
    return reveal, table, board_file(table)


# -- layout ---------------------------------------------------------------------------
def build(engine) -> None:
    d = REGISTRY["ttl-160m"].defaults
    run_state = gr.JSON(None, visible=False)   # the last run, for "Why this token?"
    with gr.Accordion("Side by side", open=True):
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Text to continue", lines=3, value=generation.EXAMPLES[0],
                                    max_length=common.MAX_TEXT_CHARS, elem_id="cmp-prompt")
            with gr.Column(scale=2):
                columns = gr.Dropdown(list(api.COLUMN_CHOICES), value=list(api.DEFAULT_COLUMNS),
                                      multiselect=True, max_choices=MAX_COLUMNS,
                                      label="Columns: model@checkpoint (2 to 4)",
                                      elem_id="cmp-columns")
                with gr.Row():
                    run = gr.Button("Compare", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
        banner = gr.Markdown(visible=False, elem_classes="notice")
        with gr.Row():
            outputs = [gr.Textbox(label=name, lines=8, interactive=False, buttons=["copy"],
                                  elem_id=f"cmp-col-{i + 1}", visible=i < len(api.DEFAULT_COLUMNS))
                       for i, name in enumerate(list(api.DEFAULT_COLUMNS) + ["Column 4"])]
        figures_md = gr.Markdown(elem_classes="figures", elem_id="cmp-figures")
        with gr.Accordion("Sampling: the same for every column", open=False):
            with gr.Row():
                temperature, top_k, top_p, rep, max_new = common.sampling_controls(
                    d, api.MAX_NEW_TOKENS_CAP)
            with gr.Row():
                greedy = gr.Checkbox(not d["do_sample"], label="Greedy (no sampling)")
                seed = gr.Number(-1, precision=0, minimum=-1, maximum=api.MAX_SEED,
                                 label="Seed for every column (−1 = random)")
        with gr.Accordion("Why this token?", open=False, elem_id="cmp-why-box"):
            with gr.Row():
                which = gr.Radio(list(range(1, MAX_COLUMNS + 1)), value=1, label="Column")
                why_btn = gr.Button("Why these tokens?")
            why = gr.HighlightedText(label="Token probabilities", show_legend=True,
                                     color_map={name: c for _, name, c in generation.PROB_BANDS},
                                     elem_id="cmp-why")
            alts = gr.Dataframe(headers=["#", "token", "probability", "top alternatives"],
                                label="Top alternatives per position", wrap=True)

    with gr.Accordion("Training timeline", open=True):
        gr.Markdown("Watch a model learn: the perplexity of **your** text under every published "
                    "training checkpoint, loaded one after another, next to the authors' "
                    "per-step perplexities.")
        with gr.Row():
            tl_text = gr.Textbox(label="Text to score along training", lines=2, value=TIMELINE_TEXT,
                                 max_length=common.MAX_TEXT_CHARS, scale=3)
            tl_model = gr.Radio(MODELS, value="ttl-160m", label="Model", scale=1)
        tl_btn = gr.Button("Measure every checkpoint", variant="primary")
        tl_md = gr.Markdown("*Nothing measured yet.*", elem_id="cmp-timeline-summary")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                tl_plot = gr.Plot(show_label=False, elem_id="cmp-timeline")
            with gr.Column(scale=2):
                tl_table = gr.Dataframe(headers=TIMELINE_COLUMNS, label="By checkpoint",
                                        interactive=False, wrap=True, elem_id="cmp-timeline-table",
                                        column_widths=["30%", "26%", "26%", "18%"])

    with gr.Accordion("Blind A/B", open=True):
        gr.Markdown("Two of the columns chosen above, drawn at random, continue the text "
                    "above with the same settings and seed. Their names are hidden until "
                    "the vote; votes are kept and rated (Bradley–Terry, as Chatbot Arena).")
        ab_btn = gr.Button("New blind match", variant="primary")
        with gr.Row():
            side_a = gr.Textbox(label="A", lines=6, interactive=False, elem_id="cmp-a")
            side_b = gr.Textbox(label="B", lines=6, interactive=False, elem_id="cmp-b")
        with gr.Row():
            match = gr.Textbox(label="Match", interactive=False, elem_id="cmp-match", scale=2)
            choice = gr.Radio(VOTES, value="A", label="Your vote", scale=2)
            vote_btn = gr.Button("Vote", scale=1)
        reveal = gr.Markdown(elem_id="cmp-reveal")
        board = gr.Dataframe(headers=BOARD_COLUMNS, label="Leaderboard", interactive=False,
                             elem_id="cmp-board")
        board_csv = gr.DownloadButton("Download leaderboard CSV", size="sm")

    gen_inputs = [temperature, top_k, top_p, rep, max_new, greedy, seed]
    cmp_outs = [*outputs, figures_md, banner, run_state]
    fn = common.bind(compare, engine)
    event = run.click(fn, [prompt, columns, *gen_inputs], cmp_outs, api_name="compare",
                      concurrency_id="compare")
    submit = prompt.submit(fn, [prompt, columns, *gen_inputs], cmp_outs,
                           api_visibility="private", concurrency_id="compare")
    ab = ab_btn.click(common.bind(blind_match, engine), [prompt, columns, *gen_inputs],
                      [side_a, side_b, match, reveal], api_name="blind_match",
                      concurrency_id="compare")
    stop.click(None, cancels=[event, submit, ab], api_visibility="private")
    why_btn.click(common.bind(explain, engine), [run_state, which], [why, alts],
                  api_visibility="private")
    tl_btn.click(common.bind(timeline, engine), [tl_text, tl_model], [tl_plot, tl_table, tl_md],
                 api_name="timeline")
    vote_btn.click(common.bind(vote, engine), [match, choice], [reveal, board, board_csv],
                   api_name="vote")
    gr.on(None, common.bind(leaderboard, engine), None, [board, board_csv], api_name="leaderboard")

