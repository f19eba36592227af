"""Backends: the code that does a model's compute. The request API (api.py)
asks a backend for five things and nothing else:

- `prepare`: the freshly loaded model made ready for it;
- `stream`: the tokens of one request, as they are drawn (`sampling.Drawn`);
- `prompt_logprobs`: each token of given texts with its log-probability and
  the top of its distribution (`sampling.Scored`);
- `continuation_logprobs`: the log-probabilities of several continuations
  of one prefix (label scoring);
- `classify`: a sequence classifier's logits for given inputs.

Three are here, and a fourth in remote.py. `local` (the default on a CPU)
decodes with the hand-written batched decoder (decoder.py) over the CPU
fast path (fastpath.py): every request on a model shares decode steps.
`llamacpp` gives that decoder llama.cpp's compute (llamacpp.py) for Llama
models, where the optional extra is installed: one stream at llama.cpp's
speed; the default on a CPU without VNNI where the extra is installed
(`llamacpp.preferred`). `transformers` runs transformers' own `generate`
with a streamer and logits processors, one request per model at a time:
the reference the local decoder is tested against, and the default on
CUDA/MPS. `vllm` (remote.py) sends the same calls to
OpenAI-compatible servers. `Settings.backend`/`backends` chooses
(TTL_BACKEND).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from queue import SimpleQueue
from typing import Iterator, Sequence

import torch

from . import fastpath, llamacpp, memory
from .decoder import Decoder, decoder_for, kv_geometry
from .loading import Loaded
from .registry import LABEL_SCORE
from .sampling import Drawn, Sampling, Scored, distribution, drawn_from
from .settings import Settings

log = logging.getLogger(__name__)


class Backend:
    name = ""
    loads_weights = True   # False: the app loads only the tokenizer and config
    scoring_room = 0       # context a `prompt_logprobs` text must leave free

    def __init__(self, settings: Settings):
        self.settings = settings

    def prepare(self, m: Loaded) -> None:
        """Make the loaded model ready for this backend (in place)."""

    def tag(self, m: Loaded) -> str | None:
        """What the model's label says of the code computing it (None: nothing)."""
        return f"{self.name} backend"

    def load_cost(self, spec, cost: int) -> int:
        """Bytes a load takes at its peak, given what loading the weights
        takes (`cost`, memory.py)."""
        return cost

    def resident(self, m: Loaded) -> int:
        """Bytes the model holds once prepared (the memory budget's count)."""
        return memory.resident_bytes(m.model)

    def status(self, m: Loaded) -> str | None:
        """News for the model's banner (markdown), e.g. a server down."""
        return None

    def stream(self, m: Loaded, ids: list[int], s: Sampling,
               cancel: threading.Event) -> Iterator[Drawn]:
        """The tokens generated after `ids`, each as it is drawn. Setting
        `cancel` or closing the iterator stops the work at the next token."""
        raise NotImplementedError

    def at_once(self, m: Loaded) -> int:
        """How many of one request's completions may decode at the same
        time: here (a server, which batches requests) all of them."""
        return 1 << 16

    def prompt_logprobs(self, m: Loaded, rows: Sequence[list[int]], top: int) -> list[list[Scored]]:
        """For each row, every token but the first with its log-probability
        given the tokens before it and the `top` most likely tokens there.
        The rows run as one padded batch on the compute thread."""
        def compute():
            input_ids, mask = pad(rows, m.tokenizer.pad_token_id or 0, m.device)
            logp = torch.log_softmax(m.model(input_ids=input_ids, attention_mask=mask)
                                     .logits.float(), -1)
            out = []
            for r, row in enumerate(rows):
                lp = logp[r, :len(row) - 1]
                chosen = lp.gather(-1, torch.tensor(row[1:], device=lp.device)[:, None])[:, 0]
                best = lp.topk(top, -1) if top else None
                out.append([Scored(t, float(c), tuple(zip(best.indices[i].tolist(),
                                                          best.values[i].tolist())) if top else ())
                            for i, (t, c) in enumerate(zip(row[1:], chosen.tolist()))])
            return out
        return m.run(compute)

    def continuation_logprobs(self, m: Loaded, prefix: list[int],
                              continuations: Sequence[list[int]]) -> list[list[float]]:
        """The log-probability of each token of each continuation after
        `prefix` (not empty). The prefix is read once and its keys and values
        serve every continuation: for label scoring it is the system prompt
        and the text, nearly all of each row."""
        def compute():
            head = m.model(input_ids=torch.tensor([prefix], device=m.device), use_cache=True,
                           logits_to_keep=1)
            first = torch.log_softmax(head.logits[0, -1].float(), -1)
            cache = head.cache
            cache.batch_repeat_interleave(len(continuations))
            ids, mask = pad(continuations, m.tokenizer.pad_token_id or 0, m.device)
            mask = torch.cat([torch.ones(len(continuations), len(prefix), dtype=mask.dtype,
                                         device=mask.device), mask], 1)
            logp = torch.log_softmax(m.model(input_ids=ids, attention_mask=mask, cache=cache)
                                     .logits.float(), -1)
            return [[float(first[c[0]])] + [float(logp[r, i, t]) for i, t in enumerate(c[1:])]
                    for r, c in enumerate(continuations)]
        return m.run(compute)

    def classify(self, m: Loaded, rows: Sequence[dict[str, list[int]]]) -> torch.Tensor:
        """A sequence classifier's logits [rows, labels] for encoded inputs
        (`input_ids`, and `token_type_ids` where the model takes them),
        padded to the longest row and run as one batch."""
        def compute():
            inputs, mask = {}, None
            for name in rows[0]:   # every field has the input_ids' lengths, so one mask
                fill = (m.config.pad_token_id or 0) if name == "input_ids" else 0
                inputs[name], mask = pad([r[name] for r in rows], fill, m.device)
            return m.model(**inputs, attention_mask=mask).logits.float().cpu()
        return m.run(compute)


def pad(rows: Sequence[list[int]], fill: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids as one tensor, right-padded (the fine-tunes pool the last
    real token), and the attention mask."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, :len(row)] = 1
    return ids.to(device), mask.to(device)


class Local(Backend):
    """The batched decoder over the CPU fast path."""
    name = "local"

    def tag(self, m: Loaded) -> str | None:
        return None   # the default on a CPU: not worth a word

    def prepare(self, m: Loaded, decodes: bool | None = None) -> None:
        decodes = m.spec.is_generative if decodes is None else decodes
        m.model, m.fast = fastpath.apply(m.model, m.device, self.settings.fast, decodes=decodes)
        if m.fast != "off":
            m.source += f", {m.fast} fast path"
        if m.fast == "bf16":
            m.dtype = torch.bfloat16

    def at_once(self, m):
        """All but one of the batch's rows, so that another visitor's
        request is never kept waiting by one with n completions; one where
        the caller's own thread does the compute (inline: no thread of ours
        may)."""
        return 1 if m.worker.inline else max(1, decoder_for(m).max_rows - 1)

    def stream(self, m, ids, s, cancel):
        request = decoder_for(m).submit(ids, s, cancel)
        try:
            while (token := m.worker.take(request.out)) is not None:
                if isinstance(token, BaseException):
                    raise token
                yield token
        finally:
            cancel.set()
            if m.worker.inline:
                m.worker.pump()   # the turn that drops it: inline, nobody else runs one
            request.released.wait(timeout=5)   # out of the batch before the caller goes on


class LlamaCpp(Local):
    """The local decoder with llama.cpp doing its compute: a GGUF (Q8_0)
    written from the loaded weights once and kept in the data directory,
    one llama.cpp sequence per request. The decoder still draws every token
    (seeds, penalties, "Why this token?" as on the local road); perplexity
    and classification stay on the torch model and the fast path. A model
    llama.cpp cannot take here (not a Llama, no extra installed, not on a
    CPU) generates locally; its banner says why where llama.cpp was named
    for it, not chosen by `auto` (llamacpp.preferred)."""
    name = "llamacpp"
    # llama.cpp reserves each sequence's whole context up front (TeenyTinyLlama-160m:
    # 75 MB a sequence), and measured 4 sequences at 1.6x one: more gain little.
    rows = 4

    def _decodes(self, spec, revision: str | None = None) -> bool:
        """Whether llama.cpp decodes the model at `revision` (None, as for a
        load's cost: at any). Where `auto` chose it, only at the model's own
        checkpoint, and not the tweet adapter: a GGUF (170 MB for 160m, 1.2 GB
        for TinyLlama) would otherwise be written for each checkpoint the
        Compare tab's timeline reads, and for a model the page only scores
        labels with."""
        if not spec.is_generative or self.settings.asked(spec.key) != "auto":
            return spec.is_generative
        return spec.task != LABEL_SCORE and revision in (None, spec.revision)

    def _why_not(self, m: Loaded) -> str | None:
        if m.device.type != "cpu":
            return "llama.cpp serves CPU models here"
        if not llamacpp.available():
            return "llama.cpp is not installed (`pip install -r requirements-llamacpp.txt`)"
        if m.model.config.model_type != "llama":
            return f"the GGUF writer here takes Llama models, and this is {m.model.config.model_type}"
        return None

    def prepare(self, m: Loaded) -> None:
        if not self._decodes(m.spec, m.revision):
            return super().prepare(m)
        compute, why = None, self._why_not(m)
        if why is None:
            try:
                path = llamacpp.gguf_for(m, Path(self.settings.data_dir) / "gguf")
                context = min(m.spec.max_input_tokens, m.model.config.max_position_embeddings)
                compute = llamacpp.Compute(path, self.rows, context, fastpath.cores())
            except Exception as exc:   # the model still serves, locally
                why = f"llama.cpp could not take it ({type(exc).__name__}: {exc})"
                log.warning("%s generates locally: %s", m.spec.key, why)
        super().prepare(m, decodes=compute is None)
        if compute is not None:
            m.decoder = Decoder(m, self.rows, compute)
            m.source += ", llama.cpp Q8_0 decoding"
        elif self.settings.asked(m.spec.key) == self.name:
            # Named, not chosen by auto: the banner says why, beside any stand-in notice.
            m.notice = "\n\n".join(filter(None, [
                m.notice, f"ℹ️ {m.spec.title} generates with the local decoder: {why}."]))

    def tag(self, m: Loaded) -> str | None:
        return "llama.cpp Q8_0" if isinstance(getattr(m.decoder, "compute", None), llamacpp.Compute) else None

    def load_cost(self, spec, cost: int) -> int:
        """Writing the GGUF the first time holds its Q8_0 arrays (34 bytes
        per 32 weights) beside the loaded fp32 model; then the file is mapped."""
        if not self._decodes(spec):
            return cost
        weights = cost // (4 * memory.LOAD_PEAK)
        return cost + 2 * weights * 34 // 32

    def resident(self, m: Loaded) -> int:
        """The torch model, and llama.cpp's: its GGUF (mapped) and the
        key/value cache of every sequence at full context (f16)."""
        compute = getattr(m.decoder, "compute", None)
        if not isinstance(compute, llamacpp.Compute):
            return super().resident(m)
        c = m.model.config
        kv_heads, head_dim = kv_geometry(c)
        cache = compute.rows * compute.context * c.num_hidden_layers * 2 * kv_heads * head_dim * 2
        return super().resident(m) + compute.path.stat().st_size + cache


class Transformers(Backend):
    """transformers' `generate`: a streamer hands over each token, a logits
    processor records the distribution each token was drawn from, and a stopping
    criterion ends it on cancel. Seeds use torch's global generator, so one
    request runs at a time, on any model (the lock), and the seed is set
    inside it."""
    name = "transformers"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self._lock = threading.Lock()

    def at_once(self, m):
        return 1   # one `generate` at a time (the lock)

    def stream(self, m, ids, s, cancel):
        from transformers import GenerationConfig, LogitsProcessor, StoppingCriteria
        from transformers.generation.streamers import BaseStreamer

        out: SimpleQueue = SimpleQueue()
        last: list[torch.Tensor] = []

        class Record(LogitsProcessor):
            # transformers puts custom processors after the penalty and before
            # temperature, top-k and top-p: those are applied here as they
            # are there (sampling.distribution).
            def __call__(self, input_ids, scores):
                last[:] = [distribution(scores[0].float().cpu(), s)]
                return scores

        class Hand(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:   # the prompt
                    self.first = False
                    return
                out.put(drawn_from(last[0], int(value.reshape(-1)[0])))

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return cancel.is_set()

        stop = end_token(m)
        config = GenerationConfig(
            do_sample=s.do_sample, max_new_tokens=s.max_new_tokens,
            repetition_penalty=s.repetition_penalty, eos_token_id=stop,
            pad_token_id=m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else stop,
            **(dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p) if s.do_sample
               else dict(temperature=None, top_k=None, top_p=None)))

        def run():
            try:
                with self._lock, torch.inference_mode():
                    if s.seed is not None:
                        torch.manual_seed(s.seed)
                    x = torch.tensor([ids], device=m.device)
                    m.model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                     generation_config=config, logits_processor=[Record()],
                                     stopping_criteria=[Cancelled()], streamer=Hand())
                out.put(None)
            except BaseException as exc:   # the caller gets it
                out.put(exc)

        thread = threading.Thread(target=run, name="transformers-generate", daemon=True)
        thread.start()
        try:
            while (token := out.get()) is not None:
                if isinstance(token, BaseException):
                    raise token
                yield token
        finally:
            cancel.set()
            thread.join(timeout=5)


def end_token(m: Loaded) -> int:
    config = getattr(m.model, "generation_config", None)
    eos = config.eos_token_id if config is not None else None
    eos = eos if eos is not None else m.tokenizer.eos_token_id
    return eos[0] if isinstance(eos, (list, tuple)) else eos

