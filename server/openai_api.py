"""The OpenAI-compatible API, on the page's own port and over the page's own
engine (an API stream and a page stream on the same model share decode
batches):

    GET  /v1/models              every served model; checkpoints as key@revision
    POST /v1/completions         text completion (stream, logprobs, n, stop, seed)
    POST /v1/chat/completions    chat, in the model's own chat format
    POST /classify               vLLM's classification shape

Requests go through the request API (inference/api.py), which validates
every value; its refusals become OpenAI error objects with the right status.
Sampling fields follow OpenAI's names (`max_tokens`, `temperature`, `top_p`,
`seed`, `n`, `stop`), plus vLLM's `top_k` and `repetition_penalty`; what is
not sent is the model card's default. Log-probabilities are those of the
distribution each token was drawn from (after the penalty, temperature,
top-k and top-p: what the page's "Why this token?" shows).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from typing import Callable, Iterator

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from inference import api
from inference.errors import EngineError, ModelUnavailable, ServerError
from inference.registry import CHAT, CLASSIFY, GENERATE, LABEL_SCORE, TASKS, ModelSpec

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_IN_FLIGHT = 16          # API requests at once; more get 503
MAX_STOP = 4
MAX_TOP_LOGPROBS = 5
CONTEXT_TOKENS = 8


class Slot:
    """One of the MAX_IN_FLIGHT places, given back once however the request ends."""

    def __init__(self, places: threading.BoundedSemaphore):
        self.places, self.held = places, places.acquire(blocking=False)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.places.release()


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse({"error": {"message": str(exc), "type": exc.kind, "param": exc.param,
                                   "code": exc.status}}, status_code=exc.status)


def from_engine(exc: EngineError) -> APIError:
    if isinstance(exc, ModelUnavailable) and "Unknown model" in str(exc):
        return APIError(404, str(exc), "not_found_error", "model")
    if exc.title in ("Too long", "Too many rows"):
        return APIError(413, str(exc))
    if isinstance(exc, ModelUnavailable):
        return APIError(503, str(exc), "service_unavailable")
    if isinstance(exc, ServerError):
        return APIError(502, str(exc), "server_error")
    return APIError(400, str(exc))


# -- request fields ----------------------------------------------------------------
def model_id(engine, body: dict, *tasks: str) -> tuple[ModelSpec, str | None]:
    """`model` as a model's entry (the registry's, or one fine-tuned here:
    `custom/<name>`) and a revision ('ttl-160m@step100000')."""
    value = body.get("model")
    if not isinstance(value, str) or not value:
        raise APIError(400, "`model` is required: one of the ids GET /v1/models lists.",
                       param="model")
    key, _, revision = value.partition("@")
    try:
        spec = engine.spec(key)
    except KeyError:
        raise APIError(404, f"The model {value!r} does not exist. GET /v1/models lists them.",
                       "not_found_error", "model") from None
    if spec.task not in tasks:
        raise APIError(400, f"{value!r} cannot serve this route.", param="model")
    if revision and revision not in spec.revisions:
        raise APIError(404, f"The model {value!r} does not exist: {key} has the checkpoints "
                            f"{', '.join(spec.revisions)}.", "not_found_error", "model")
    return spec, revision or None


def settings(body: dict, key: str) -> dict:
    """OpenAI's (and vLLM's) sampling fields as the request API's settings."""
    out = {"max_new_tokens": body.get("max_tokens", body.get("max_completion_tokens")),
           **{name: body.get(name) for name in ("temperature", "top_p", "top_k",
                                                 "repetition_penalty", "seed")}}
    if type(out["temperature"]) in (int, float) and out["temperature"] == 0:   # OpenAI's greedy
        out.update(temperature=None, do_sample=False)
    elif any(out[k] is not None for k in ("temperature", "top_p", "top_k")):
        out["do_sample"] = True
    return {k: v for k, v in out.items() if v is not None}


def stops(body: dict) -> list[str]:
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > MAX_STOP or \
            not all(isinstance(s, str) and 0 < len(s) <= 100 for s in stop):
        raise APIError(400, f"`stop` must be a string or a list of up to {MAX_STOP} strings.",
                       param="stop")
    return stop


def count(body: dict, name: str, default: int, most: int, least: int = 0) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise APIError(400, f"`{name}` must be a whole number from {least} to {most}.",
                       param=name)
    return value


# -- one choice, followed token by token ---------------------------------------------
class Choice:
    """A completion's text, held back where a stop string may be starting,
    and its tokens, each with its text and log-probabilities (`infos`), cut
    where a stop string cuts the text."""

    def __init__(self, index: int, stop: list[str], explain: Callable, prompt: list[int]):
        self.index, self.stop, self.explain, self.prompt = index, stop, explain, prompt
        self.text, self.sent, self.ids, self.infos, self.ends = "", 0, [], [], []
        self.reported = 0   # tokens whose log-probabilities went out
        self.finish: str | None = None

    def add(self, piece: api.Piece) -> None:
        new = piece.drawn[len(self.ids):]
        # The tokens before are context for the new ones' text (a word's
        # space); a few are enough, and decoding them all again per piece is not.
        infos = self.explain((self.prompt + self.ids)[-CONTEXT_TOKENS:], new)
        self.text += piece.text
        self.ids = list(piece.ids)
        for info in infos:
            self.infos.append(info)
            self.ends.append((self.ends[-1] if self.ends else 0) + len(info.text))
        for s in self.stop:
            at = self.text.find(s)
            if at >= 0:
                self.text, self.finish = self.text[:at], "stop"
                keep = next((k + 1 for k, end in enumerate(self.ends) if end >= at), len(self.ends))
                keep = keep if at > 0 else 0
                self.ids, self.infos, self.ends = self.ids[:keep], self.infos[:keep], self.ends[:keep]

    def ready(self) -> str:
        """New text safe to send (not the start of a stop string)."""
        hold = 0 if self.finish else max((len(s) - 1 for s in self.stop), default=0)
        end = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent:end], end
        return out

    def logprobs(self, top: int, everything: bool = False) -> list[dict]:
        """The tokens not yet reported whose text has been sent (all of them
        when `everything`), with their log-probabilities and the `top` likeliest."""
        upto = len(self.infos) if everything else \
            sum(1 for end in self.ends if end <= self.sent)
        out = [{"token": t.text, "logprob": math.log(t.prob) if t.prob > 0 else -9999.0,
                "top_logprobs": [{"token": a, "logprob": math.log(p)}
                                 for a, p in t.alternatives[:top]]}
               for t in self.infos[self.reported:upto]]
        self.reported = max(self.reported, upto)
        return out


def run(events: Iterator, choices: list[Choice], started_box: list, cancel: api.Cancel,
        on_piece: Callable[[Choice], None] = lambda c: None) -> None:
    """Drive a request's events into its choices (on a worker thread)."""
    try:
        for event in events:
            if isinstance(event, api.Started):
                started_box.append(event)
            elif isinstance(event, api.Piece):
                choice = choices[event.index]
                if choice.finish:
                    continue   # a stop string ended it
                choice.add(event)
                on_piece(choice)
                if choice.finish:
                    cancel.drop(choice.index)   # its compute ends at the next token
    finally:
        events.close()


def finish_reasons(choices: list[Choice], started: api.Started) -> None:
    for c, s in zip(choices, started.samplings):
        c.finish = c.finish or ("length" if len(c.ids) >= s.max_new_tokens else "stop")


# -- the routes ------------------------------------------------------------------------
def routes(engine) -> list:
    """The routes, over `engine`, for `launch(app_kwargs={"routes": ...})`."""
    router = APIRouter()
    in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def guarded(handler):
        async def endpoint(request: Request):
            try:
                if engine.settings.api_key and request.headers.get("authorization") != \
                        f"Bearer {engine.settings.api_key}":
                    raise APIError(401, "A valid API key is required (Authorization: Bearer).",
                                   "authentication_error")
                if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
                    raise APIError(413, f"The request is over {MAX_BODY_BYTES:,} bytes.")
                body = {}
                if request.method == "POST":
                    raw = bytearray()
                    async for part in request.stream():   # a chunked body is counted as it comes
                        raw += part
                        if len(raw) > MAX_BODY_BYTES:
                            raise APIError(413, f"The request is over {MAX_BODY_BYTES:,} bytes.")
                    try:
                        body = json.loads(raw)
                    except (ValueError, RecursionError):
                        raise APIError(400, "The body must be JSON.") from None
                    if not isinstance(body, dict):
                        raise APIError(400, "The body must be a JSON object.")
                slot = Slot(in_flight)
                if not slot.held:
                    raise APIError(503, "Too many requests at once; try again shortly.",
                                   "service_unavailable")
                try:
                    return await handler(request, body, slot)
                except BaseException:
                    slot.release()
                    raise
            except APIError as exc:
                return error_response(exc)
            except EngineError as exc:
                return error_response(from_engine(exc))
        return endpoint

    async def models(request, body, slot):
        slot.release()
        data = [{"id": f"{s.key}@{r}" if r != s.revision else s.key, "object": "model",
                 "created": 0, "owned_by": "ttl-playground",
                 "root": s.key if s.directory else s.hub_id}   # not a server path
                for s in engine.models(*TASKS) for r in s.revisions]
        return JSONResponse({"object": "list", "data": data})

    async def completions(request, body, slot):
        spec, revision = model_id(engine, body, GENERATE)
        key = spec.key
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "`prompt` must be a string.", param="prompt")
        n = count(body, "n", 1, api.MAX_COMPLETIONS, least=1)
        top = count(body, "logprobs", 0, MAX_TOP_LOGPROBS) if body.get("logprobs") is not None else None
        cancel = api.Cancel()
        events = api.generate(engine, key, prompt, revision, n=n, cancel=cancel,
                              **settings(body, key))
        return await respond(request, body, slot, key, events, n, cancel, top, chat=False)

    async def chat_completions(request, body, slot):
        spec, revision = model_id(engine, body, GENERATE, CHAT, LABEL_SCORE)
        key = spec.key
        if revision and revision != spec.revision:
            raise APIError(400, "Chat is served at the model's main revision only.", param="model")
        if spec.task == GENERATE:
            raise APIError(400, f"{key!r} has no chat template: it continues text. Use "
                                "POST /v1/completions with a prompt.", param="model")
        n = count(body, "n", 1, api.MAX_COMPLETIONS, least=1)
        top = None
        if body.get("logprobs"):
            top = count(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        cancel = api.Cancel()
        events = api.chat(engine, key, body.get("messages"), n=n, cancel=cancel, rank=False,
                          **settings(body, key))
        return await respond(request, body, slot, key, events, n, cancel, top, chat=True)

    async def respond(request, body, slot, key, events, n, cancel, top, chat):
        stop = stops(body)
        model = body["model"]
        streaming = body.get("stream", False)
        options = body.get("stream_options") or {}
        if not isinstance(streaming, bool) or not isinstance(options, dict):
            raise APIError(400, "`stream` must be true or false and `stream_options` an object.",
                           param="stream")
        include_usage = options.get("include_usage") is True
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        kind = "chat.completion" if chat else "text_completion"
        # The first event (validation, loading) is waited for before any
        # answer, so that a refused request gets its error status.
        started = await anyio.to_thread.run_sync(next, events)
        choices = [Choice(i, stop, started.explain, started.prompt) for i in range(n)]

        def logprobs_of(c: Choice, everything: bool = False):
            if top is None:
                return None
            entries = c.logprobs(top, everything)
            if chat:
                return {"content": [{**e, "bytes": list(e["token"].encode())} for e in entries]}
            return {"tokens": [e["token"] for e in entries],
                    "token_logprobs": [e["logprob"] for e in entries],
                    "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]}
                                     for e in entries]}

        def usage():
            new = sum(len(c.ids) for c in choices)
            return {"prompt_tokens": len(started.prompt), "completion_tokens": new,
                    "total_tokens": len(started.prompt) + new}

        if not streaming:
            watch = asyncio.create_task(watch_disconnect(request, cancel))
            try:
                await anyio.to_thread.run_sync(run, events, choices, [started], cancel)
            finally:
                watch.cancel()
                slot.release()
            finish_reasons(choices, started)
            out = []
            for c in choices:
                c.ready()
                item = {"index": c.index, "logprobs": logprobs_of(c, True), "finish_reason": c.finish}
                item.update({"message": {"role": "assistant", "content": c.text}} if chat
                            else {"text": c.text})
                out.append(item)
            return JSONResponse({"id": rid, "object": kind, "created": created, "model": model,
                                 "choices": out, "usage": usage()})

        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        def chunk(c: Choice, text: str, finish=None, role=False) -> str:
            lp = None if role else logprobs_of(c, everything=finish is not None)
            if chat:
                delta = {"role": "assistant", "content": ""} if role else {"content": text}
                item = {"index": c.index, "delta": delta, "logprobs": lp, "finish_reason": finish}
            else:
                item = {"index": c.index, "text": text, "logprobs": lp, "finish_reason": finish}
            return "data: " + json.dumps({"id": rid, "object": chunk_kind,
                                          "created": created, "model": model,
                                          "choices": [item]}) + "\n\n"

        def on_piece(c: Choice):   # on the worker thread, which alone changes the choices
            text = c.ready()
            if text:
                loop.call_soon_threadsafe(queue.put_nowait, chunk(c, text))

        async def produce():
            try:
                await anyio.to_thread.run_sync(run, events, choices, [started], cancel, on_piece)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        async def stream():
            task = asyncio.create_task(produce())
            try:
                if chat:
                    for c in choices:
                        yield chunk(c, "", role=True)
                while (item := await queue.get()) is not None:
                    yield item
                try:
                    await task
                except Exception as exc:   # after the headers: an error event, then the end
                    error = from_engine(exc) if isinstance(exc, EngineError) else \
                        APIError(500, "The model failed while answering; try again.", "server_error")
                    log.warning("stream of %s ended by %s", model, type(exc).__name__)
                    yield "data: " + json.dumps({"error": {"message": str(error), "type": error.kind,
                                                           "param": None, "code": error.status}}) + "\n\n"
                    yield "data: [DONE]\n\n"
                    return
                finish_reasons(choices, started)
                for c in choices:
                    yield chunk(c, c.ready(), c.finish)
                if include_usage:
                    yield "data: " + json.dumps({"id": rid, "object": chunk_kind, "created": created,
                                                 "model": model, "choices": [],
                                                 "usage": usage()}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:   # a client that goes away stops the compute
                cancel.set()
                slot.release()
                if not task.done():
                    with anyio.CancelScope(shield=True):   # this task may be cancelled itself
                        await asyncio.wait([task])

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def classify(request, body, slot):
        try:
            spec, revision = model_id(engine, body, CLASSIFY, LABEL_SCORE)
            key = spec.key
            if revision and revision != spec.revision:
                raise APIError(400, "Classifiers are served at their main revision only.",
                               param="model")
            items = body.get("input")
            single = isinstance(items, str) or (len(spec.inputs) > 1 and isinstance(items, list)
                                                and items and all(isinstance(x, str) for x in items))
            items = [items] if single else items
            if not isinstance(items, list) or not items:
                raise APIError(400, "`input` must be a string or a list of strings"
                                    + (" (here: pairs)" if len(spec.inputs) > 1 else "") + ".",
                               param="input")
            rows = []
            for item in items:
                values = [item] if isinstance(item, str) else item
                if not isinstance(values, list) or len(values) != len(spec.inputs):
                    raise APIError(400, f"{key} takes {len(spec.inputs)} text(s) per input: "
                                        f"{', '.join(spec.inputs)}.", param="input")
                rows.append(api.check_fields(spec, dict(zip(spec.inputs, values))))
            batch = await anyio.to_thread.run_sync(lambda: api.classify_batch(engine, key, rows))
        finally:
            slot.release()
        data = [{"index": i, "label": max(p, key=p.get), "probs": list(p.values()),
                 "num_classes": len(p)} for i, p in enumerate(batch.results)]
        return JSONResponse({"id": f"classify-{uuid.uuid4().hex}", "object": "list",
                             "created": int(time.time()), "model": body["model"], "data": data})

    router.add_api_route("/v1/models", guarded(models), methods=["GET"])
    router.add_api_route("/v1/completions", guarded(completions), methods=["POST"])
    router.add_api_route("/v1/chat/completions", guarded(chat_completions), methods=["POST"])
    router.add_api_route("/classify", guarded(classify), methods=["POST"])
    return router.routes


async def watch_disconnect(request: Request, cancel: threading.Event) -> None:
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.25)
