"""The remote backend: a model computed by OpenAI-compatible servers (vLLM),
one or more replicas of it, with the app in front (page, API, MCP).

    TTL_BACKEND="ttl-160m=vllm:http://h1:8000|http://h2:8000"

The app keeps the model's tokenizer (prompts are sent as token ids, and
"Why this token?" decodes ids) and asks the servers for the rest:

- `stream`: `/v1/completions` streamed, with `logprobs` (the distribution
  each token was drawn from when the server runs with
  `--logprobs-mode processed_logprobs`) and the drawn ids;
- `prompt_logprobs`: `/v1/completions` with `prompt_logprobs` (perplexity,
  label scoring);
- `classify`: vLLM's `/classify` with `use_activation` off (the logits).

A server serves a model under a name: the registry key (`--served-model-name
ttl-160m`), the hub id, or for a checkpoint `key@revision`; a LoRA adapter
under its module name (`--lora-modules tinyllama-tweet=DIR`). Each request
goes to the replica, among those up and serving its name, with the fewest
requests in flight (of those, the least used). A replica that refuses a connection is marked down and
the request tried on another; every replica is checked again every
`HEALTH_EVERY_S`, so one that comes back gets traffic again. When none is
up the request fails with `ModelUnavailable`: never a silent stand-in.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Iterator, Sequence

import httpx
import torch

from .backends import Backend
from .errors import EngineError, ModelUnavailable, ServerError
from .loading import Loaded
from .sampling import TOP_ALTERNATIVES, Drawn, Scored
from .settings import Settings

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 5.0
TIMEOUT = httpx.Timeout(connect=3.0, read=60.0, write=10.0, pool=10.0)   # read: between two tokens
# Shorter than the servers' own keep-alive (uvicorn's 5 s), so that the app
# never sends on a connection the server is closing.
KEEPALIVE_S = 3.0
MIN_VLLM = (0, 32)   # /classify's use_activation, processed logprobs
PROBE_TEXT = "A PUCRS é uma universidade 😊 em Porto Alegre."   # tokenizers must agree on it


@dataclass(eq=False)
class Replica:
    url: str
    up: bool = False
    models: frozenset[str] = frozenset()   # the names it serves (/v1/models)
    in_flight: int = 0
    sent: int = 0      # requests so far: ties go to the least used, so idle replicas alternate


class Pool:
    """The replicas of one model: which are up, what each serves, and how
    many requests each has in flight."""

    def __init__(self, urls: Sequence[str], client: httpx.Client):
        self.replicas = [Replica(u.rstrip("/").removesuffix("/v1")) for u in urls]
        self.client = client
        self._lock = threading.Lock()

    def check(self, replica: Replica) -> None:
        try:
            r = self.client.get(f"{replica.url}/v1/models", timeout=2.0)
            r.raise_for_status()
            replica.models = frozenset(m["id"] for m in r.json()["data"])
            if not replica.up:
                log.info("replica %s is up, serving %s", replica.url, sorted(replica.models))
            replica.up = True
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            if replica.up:
                log.warning("replica %s is down: %s", replica.url, exc)
            replica.up = False

    def check_all(self) -> None:
        for replica in self.replicas:
            self.check(replica)

    def up(self, names: Sequence[str]) -> list[tuple[Replica, str]]:
        out = []
        for r in self.replicas:
            name = next((n for n in names if n in r.models), None)
            if r.up and name:
                out.append((r, name))
        return out

    @contextmanager
    def replica(self, names: Sequence[str], title: str) -> Iterator[tuple[Replica, str]]:
        """The replica to send a request to (fewest in flight), counted as
        busy while the caller uses it. With none up, they are asked again
        first: one refused connection must not fail every request until the
        next health check."""
        if not self.up(names):
            self.check_all()
        with self._lock:
            choices = self.up(names)
            if not choices:
                raise unavailable(title, self)
            replica, name = min(choices, key=lambda c: (c[0].in_flight, c[0].sent))
            replica.in_flight += 1
            replica.sent += 1
        try:
            yield replica, name
        finally:
            with self._lock:
                replica.in_flight -= 1

    def status(self) -> tuple[int, int]:
        return sum(r.up for r in self.replicas), len(self.replicas)


def unavailable(title: str, pool: Pool) -> ModelUnavailable:
    up, total = pool.status()
    return ModelUnavailable(
        f"{title}'s {'server is' if total == 1 else f'{total} servers are'} not answering"
        + (" for this checkpoint." if up else "."),
        "Try again in a minute; if it lasts, the operator has to start the server "
        "(see docs/scale-out.md).")


def served_names(m: Loaded) -> list[str]:
    """The names a server may serve `m` under, the most specific first."""
    spec, names = m.spec, [f"{m.spec.key}@{m.revision}", f"{m.spec.hub_id}@{m.revision}"]
    return names + ([spec.key, spec.hub_id] if m.revision == spec.revision else [])


class Remote(Backend):
    name = "vllm"
    loads_weights = False   # the servers hold them; the app keeps the tokenizer
    scoring_room = 1        # vLLM wants room for one new token after a scored text

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.client = httpx.Client(timeout=TIMEOUT, limits=httpx.Limits(
            max_connections=256, keepalive_expiry=KEEPALIVE_S))
        self.pools = {key: Pool(urls, self.client) for key, urls in settings.remotes.items()}
        self._watcher: threading.Thread | None = None
        self._watcher_lock = threading.Lock()

    # -- replicas -----------------------------------------------------------
    def _watch(self) -> None:
        """Check every replica every HEALTH_EVERY_S, from the first use on."""
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._health_loop, name="vllm-health",
                                                 daemon=True)
                self._watcher.start()

    def _health_loop(self) -> None:
        while True:
            time.sleep(HEALTH_EVERY_S)
            for pool in self.pools.values():
                try:
                    pool.check_all()
                except Exception:   # the loop must outlive any surprise
                    log.exception("health check failed")

    @contextmanager
    def _send(self, m: Loaded, method: str, path: str,
              body: dict | None) -> Iterator[httpx.Response]:
        """A streamed response to `body` (its "model" filled in) from a
        replica of `m`; a replica that cannot be connected to is marked down
        and the next one tried. Error statuses become EngineErrors."""
        pool = self.pools[m.spec.key]
        for _ in range(len(pool.replicas) + 1):
            with pool.replica(served_names(m), m.spec.title) as (replica, name):
                answered = False   # after the caller has the response, nothing is retried
                try:
                    payload = None if body is None else {**body, "model": name}
                    with self.client.stream(method, replica.url + path, json=payload) as response:
                        if response.status_code >= 400:
                            response.read()
                            raise server_error(m, response)
                        answered = True
                        yield response
                        return
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    if answered:
                        raise
                    log.warning("replica %s refused a request: %s", replica.url, exc)
                    replica.up = False
                except httpx.TimeoutException:
                    raise ServerError(f"{m.spec.title}'s server did not answer in time "
                                      f"({TIMEOUT.read:.0f} s).") from None
                except httpx.HTTPError as exc:
                    if not answered:   # e.g. a connection closed as it was reused: try again
                        log.warning("replica %s failed a request: %s", replica.url, exc)
                        continue
                    log.warning("replica %s failed mid-request: %s", replica.url, exc)
                    replica.up = False
                    raise Lost(f"{m.spec.title}'s server stopped answering in the middle "
                                      "of the request; try again.") from None
        raise unavailable(m.spec.title, pool)

    def _post(self, m: Loaded, path: str, body: dict | None, read=lambda reply: reply):
        """`read(reply)` of the JSON reply to `body` (None: a GET); a reply not
        of the expected shape is an error for people, not a KeyError."""
        with self._send(m, "GET" if body is None else "POST", path, body) as response:
            response.read()
            with unexpected(m):
                return read(response.json())

    # -- the Backend calls ------------------------------------------------------
    def prepare(self, m: Loaded) -> None:
        """Check that a replica serves `m` now and that its tokenizer is `m`'s:
        the app sends token ids, so another tokenizer would garble text."""
        pool = self.pools[m.spec.key]
        self._watch()
        pool.check_all()
        if not pool.up(served_names(m)):
            raise unavailable(m.spec.title, pool)
        version = self._post(m, "/version", None, lambda reply: str(reply.get("version", "")))
        if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < MIN_VLLM:
            raise ModelUnavailable(
                f"The server for {m.spec.title} runs vLLM {version or 'of an unknown version'}.",
                f"The app needs vLLM {'.'.join(map(str, MIN_VLLM))} or later.")
        theirs = self._post(m, "/tokenize", {"prompt": PROBE_TEXT, "add_special_tokens": False},
                            lambda reply: reply["tokens"])
        if theirs != m.tokenizer.encode(PROBE_TEXT, add_special_tokens=False):
            raise ModelUnavailable(
                f"The server for {m.spec.title} serves a model with another tokenizer.",
                "Serve the same model (or stand-in) the app loads its tokenizer from.")
        total = len(pool.replicas)
        m.source += f", served by vLLM ({total} replica{'s' * (total > 1)})"

    def status(self, m: Loaded) -> str | None:
        up, total = self.pools[m.spec.key].status()
        if up == total:
            return None
        down = f"{total - up} of {total} servers of {m.spec.title} {'is' if total - up == 1 else 'are'}"
        return f"⚠️ {down} not answering" + ("; the others serve meanwhile." if up else ".")

    def stream(self, m, ids, s, cancel):
        """The tokens from one replica; when it is lost mid-answer, the
        answer goes on at another, from the tokens so far (a greedy answer
        is the same; a sampled one goes on with fresh draws)."""
        new: list[int] = []
        for _ in range(len(self.pools[m.spec.key].replicas)):
            try:
                for token in self._stream(m, ids + new, s, s.max_new_tokens - len(new), cancel):
                    new.append(token.id)
                    yield token
                return
            except Lost:
                if len(new) >= s.max_new_tokens or cancel.is_set():
                    return
                log.warning("%s: a replica was lost after %d tokens; going on at another",
                            m.spec.key, len(new))
        raise ServerError(f"{m.spec.title}'s servers stopped answering in the middle of the "
                          "request; try again.")

    def _stream(self, m, ids, s, max_tokens, cancel):
        body = {"prompt": ids, "max_tokens": max_tokens, "stream": True,
                "logprobs": TOP_ALTERNATIVES, "return_tokens_as_token_ids": True,
                "return_token_ids": True, "repetition_penalty": s.repetition_penalty,
                "temperature": 0.0}
        if s.do_sample:
            body.update(temperature=s.temperature, top_k=s.top_k or -1, top_p=s.top_p,
                        seed=s.seed)
        with self._send(m, "POST", "/v1/completions", body) as response, \
                hang_up_on(cancel, response):
            try:
                for line in response.iter_lines():
                    if cancel.is_set():
                        return   # leaving closes the connection: vLLM aborts the request
                    if not line.startswith("data:") or line.strip() == "data: [DONE]":
                        continue
                    with unexpected(m):
                        event = json.loads(line[5:])
                        if "error" in event:
                            log.warning("%s's server failed mid-stream: %s", m.spec.key,
                                        event["error"])
                            raise ServerError(f"{m.spec.title}'s server failed; try again.")
                        tokens = list(_drawn(event["choices"][0]))
                    yield from tokens
            except httpx.HTTPError:
                if cancel.is_set():   # hung up by hang_up_on: not the server's fault
                    return
                raise

    def prompt_logprobs(self, m, rows, top):
        def read(reply):
            out = [None] * len(rows)
            for choice in reply["choices"]:
                row = rows[choice["index"]]
                out[choice["index"]] = [_scored(t, choice["prompt_logprobs"][i], top)
                                        for i, t in enumerate(row[1:], start=1)]
            return out
        return self._post(m, "/v1/completions", {
            "prompt": [list(r) for r in rows], "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": top}, read)

    def continuation_logprobs(self, m, prefix, continuations):
        # Whole rows: the server keeps a shared prefix's keys and values itself
        # (vLLM's prefix caching).
        rows = [list(prefix) + list(c) for c in continuations]
        return [[t.logprob for t in row[len(prefix) - 1:]] for row in self.prompt_logprobs(m, rows, top=0)]

    def classify(self, m, rows):
        if any(set(r) != {"input_ids"} for r in rows):
            raise EngineError(f"{m.spec.title} takes text pairs, which the remote backend "
                              "does not send; serve it locally.")
        def read(reply):
            logits = [d["probs"] for d in sorted(reply["data"], key=lambda d: d["index"])]
            if any(len(row) != len(m.spec.labels) for row in logits):
                raise ValueError("not this model's labels")
            return torch.tensor(logits, dtype=torch.float32)
        return self._post(m, "/classify", {"input": [r["input_ids"] for r in rows],
                                           "use_activation": False}, read)


@contextmanager
def unexpected(m: Loaded) -> Iterator[None]:
    """A reply not of the shape asked for (another server, another version)."""
    try:
        yield
    except EngineError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        log.warning("%s's server sent an unexpected reply: %r", m.spec.key, exc)
        raise ServerError(f"{m.spec.title}'s server sent a reply the app does not "
                          "understand.") from None


@contextmanager
def hang_up_on(cancel, response: httpx.Response) -> Iterator[None]:
    """Close the connection as soon as `cancel` is set, even while the reader
    waits for a token that has not come (a request in vLLM's queue, or a
    long prefill): vLLM drops a request whose connection is closed. A shut
    socket wakes a blocked read; a closed one would not."""
    done = threading.Event()

    def watch():
        while not done.wait(0.05):
            if cancel.is_set():
                stream = response.extensions.get("network_stream")
                sock = stream.get_extra_info("socket") if stream is not None else None
                if sock is not None:
                    with suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
    watcher = threading.Thread(target=watch, name="vllm-hang-up", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


class Lost(ServerError):
    """A replica that stopped answering in the middle of a reply."""


def _id(token: str) -> int:
    return int(token.removeprefix("token_id:"))


def _drawn(choice: dict) -> Iterator[Drawn]:
    """The tokens of one streamed completion chunk (token ids asked for with
    `return_tokens_as_token_ids`)."""
    lp = choice.get("logprobs") or {}
    for token, logprob, top in zip(lp.get("tokens", ()), lp.get("token_logprobs", ()),
                                   lp.get("top_logprobs", ())):
        alternatives = sorted(((_id(t), math.exp(v)) for t, v in (top or {}).items()
                               if v is not None and v > -math.inf), key=lambda a: -a[1])
        yield Drawn(_id(token), math.exp(logprob) if logprob is not None else 0.0,
                    tuple((i, p) for i, p in alternatives if p > 0))


def _scored(token: int, entry: dict | None, top: int) -> Scored:
    """vLLM's prompt logprobs at one position: the token's own, and the
    `top` best by rank."""
    entry = {int(k): v for k, v in (entry or {}).items()}
    best = sorted((v["rank"], i, v["logprob"]) for i, v in entry.items() if v["rank"] <= top)
    return Scored(token, entry[token]["logprob"], tuple((i, lp) for _, i, lp in best))


def server_error(m: Loaded, response: httpx.Response) -> EngineError:
    """An error status as a message for people: the server's own for a
    refused request (4xx), a short one for a failure (5xx)."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]
    if response.status_code < 500:
        return EngineError(f"{m.spec.title}'s server refused the request: {message}")
    log.warning("%s's server failed (%s): %s", m.spec.key, response.status_code, message)
    return ServerError(f"{m.spec.title}'s server failed ({response.status_code}); try again.")
