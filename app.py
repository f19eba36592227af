"""TeenyTinyLlama Playground: try, compare and present small Brazilian-
Portuguese language models.

    python app.py              # real models; a stand-in, with a banner, where one can't be had
    python app.py --standin    # stand-ins only (offline demos, tests)

Server address and port come from Gradio's own settings (GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT), as on Hugging Face Spaces.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("spaces"):   # ZeroGPU: `spaces` before torch touches CUDA
    import spaces  # noqa: F401

import argparse
import logging

import gradio as gr
from starlette.middleware import Middleware

from inference.engine import Engine
from inference.settings import BACKENDS, DEVICES, DTYPES, Settings, parse_backends, parse_local_dirs
from inference.registry import DEFAULT_KEYS
from server import openai_api
from server.limits import BodyLimit, PublicEventsOnly, public_events
from ui import benchmarks, chat, classification, common, compare, finetune, generation
from ui.theme import CSS, HEAD, THEME, TOGGLE_PRESENT

# Compare, the talk's centrepiece, after the two generating tabs.
TABS = [("Text generation", generation), ("Instruction chat", chat), ("Compare", compare),
        ("Classification", classification), ("Fine-tune", finetune), ("Benchmarks", benchmarks)]

# One line on a phone; what it means opens on a click (common.compact).
STANDIN_BANNER = (
    "**Serving stand-ins, not the real models.** Every model here has its real "
    "architecture, tokenizer kind and special tokens but tiny weights that only saw a "
    "page of test text: what they write says nothing about the real models. Start without "
    "`--standin` to serve the real models.")


def build(engine: Engine) -> gr.Blocks:
    # Uploads and the files Gradio serves are deleted after FILES_KEPT_S.
    keep = common.FILES_KEPT_S
    with gr.Blocks(title="TeenyTinyLlama Playground", delete_cache=(keep, keep)) as demo:
        with gr.Row(elem_id="header", equal_height=True):
            # The llama in a span of its own: hidden where it would be a box (ui/theme.py).
            gr.Markdown('# <span class="emoji">🦙</span> TeenyTinyLlama Playground',
                        elem_id="title")
            present = gr.Button("Presentation mode", size="sm", scale=0, min_width=0,
                                elem_id="present-toggle")
        gr.Markdown("Small Brazilian-Portuguese language models — TeenyTinyLlama, Aira-2 and a "
                    "TinyLlama tweet-sentiment adapter — next to their published benchmarks.",
                    elem_id="subtitle")
        if engine.settings.standin:
            gr.Markdown(common.compact(STANDIN_BANNER), elem_id="standin-banner")
        # Tabs that do not fit wrap onto a second row, rather than hide behind a menu.
        with gr.Tabs(overflow_behavior="wrap"):
            for title, module in TABS:
                with gr.Tab(title) as tab:
                    # A tab whose choices change while the app runs (models
                    # fine-tuned here) returns (fn, inputs, outputs) that
                    # refresh them each time it is opened.
                    refresh = module.build(engine)
                if refresh:
                    tab.select(*refresh, api_visibility="private")
        present.click(None, js=TOGGLE_PRESENT, api_visibility="private")
    # Several users at once: every forward pass runs on the engine's one
    # compute thread, and streams on the same model are decoded in one batch.
    demo.queue(default_concurrency_limit=4, max_size=64)
    common.quiet_refusals(demo)
    return demo


# Sessions whose per-session state Gradio keeps (~260 KB each), the oldest
# let go first: Gradio's default of 10,000 is 2.6 GB on a 16 GB Space.
SESSIONS_KEPT = 1000


def launch(demo: gr.Blocks, engine: Engine, **kwargs):
    """The page, its Gradio API and MCP tools (/gradio_api/mcp/), and the
    OpenAI-compatible routes (/v1/...) on one port, over one engine. The
    routes and the body limit are handed to the FastAPI app Gradio makes,
    so Gradio's own settings (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT,
    --share) still apply. show_error: an API client sending a wrong type
    (refused by a component before any handler runs) is told why, not just
    "Error"."""
    app_kwargs = {"routes": openai_api.routes(engine), "middleware": [
        Middleware(BodyLimit), Middleware(PublicEventsOnly, public=public_events(demo))]}
    return demo.launch(**{"theme": THEME, "css": CSS, "head": HEAD, "max_file_size": "5mb",
                          "show_error": True, "mcp_server": True, "app_kwargs": app_kwargs,
                          "state_session_capacity": SESSIONS_KEPT, **kwargs})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--standin", action="store_true", default=None,
                   help="serve stand-in models only (no download; env TTL_STANDIN=1)")
    p.add_argument("--strict", action="store_true", default=None,
                   help="fail instead of falling back to a stand-in (env TTL_STRICT=1)")
    p.add_argument("--device", choices=DEVICES, help="env TTL_DEVICE (default auto)")
    p.add_argument("--dtype", choices=list(DTYPES), help="env TTL_DTYPE (default auto)")
    p.add_argument("--backend", metavar="BACKEND",
                   help=f"what computes the models: {', '.join(BACKENDS)}, per model too: "
                        "'local,ttl-460m=transformers', vLLM servers as "
                        "'ttl-160m=vllm:http://h1:8000|http://h2:8000' (env TTL_BACKEND; "
                        "default auto: on a CPU local, or llamacpp where it is installed and the CPU "
                        "has no VNNI; transformers on a GPU)")
    p.add_argument("--local", action="append", default=[], metavar="KEY=DIR",
                   help="load a model from a local directory (repeatable; env TTL_LOCAL_DIRS)")
    p.add_argument("--4bit", dest="load_in_4bit", action="store_true", default=None,
                   help="on CUDA, load the tweet adapter's base model in 4-bit (env TTL_4BIT=1)")
    p.add_argument("--share", action="store_true", help="open a public Gradio share link")
    return p.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    local = parse_local_dirs(",".join(args.local)) if args.local else None
    backend, backends, remotes = parse_backends(args.backend) if args.backend else (None,) * 3
    settings = Settings.from_env(standin=args.standin, strict=args.strict, device=args.device,
                                 dtype=args.dtype, local_dirs=local, backend=backend,
                                 backends=backends, remotes=remotes, load_in_4bit=args.load_in_4bit)
    engine = Engine(settings)
    if settings.zero_gpu:
        # ZeroGPU Spaces load their models at start, outside the `spaces.GPU`
        # calls that then use them (the ZeroGPU documentation's pattern).
        for key in DEFAULT_KEYS:
            engine.load(key)
    launch(build(engine), engine, share=args.share)


if __name__ == "__main__":
    main()
