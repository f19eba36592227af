"""Batched decoding: every request streaming from one model is decoded in one
batch, one token per step, over a key/value cache of our own with one row per
request. Requests join the batch and leave it between steps (continuous
batching): a new prompt is prefilled on its own, then decodes with the rest.
A row that a request leaves keeps its keys and values while no other
prompt needs it (the last one freed even when the model goes idle): a
prompt that starts the same way (a chat's next turn) is prefilled from
where they end (`Prefixes`); one that starts as a row still decoding (the
next of n completions, decoded beside the first) copies that row's.

Why not `model.generate`: it serves one request at a time, and on a small
CPU a step costs about the same for one row as for four (the time goes to
reading the weights: 11.7 against 13.8 ms for TeenyTinyLlama-160m with int8
weights on 2 vCPUs), so users who share a step share its cost. The step is
written by hand, as gpt-fast's `decode_one_token`, so that it can keep one
cache row per request and read the stacked q/k/v weights of
`fastpath.fuse`. Its modules are the model's own: what the fast path did
to them (int8, bf16) applies, and tests check its logits against
transformers' forward.

Read top to bottom: `Cache` -> `Prefixes` -> `attend` -> one forward per
architecture (`llama`, `gpt2`) -> `Torch`, the compute over them ->
`Decoder`, the batch of one model, which the engine's compute thread
(worker.py) runs a turn at a time. The llama.cpp backend gives the same
Decoder another compute (llamacpp.Compute). Each row's token is drawn by
`sampling.draw`.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .sampling import Sampling, draw

if TYPE_CHECKING:
    from .loading import Loaded

MAX_ROWS = 8         # requests decoded together per model; later ones wait their turn
MIN_LENGTH = 128     # the cache grows by doubling from here
# A row that shares fewer first ids with a new prompt is taken as sharing
# none: so few are quick to compute again, and every Llama prompt shares
# its first one (BOS), which would hand a stranger's prompt the row holding
# someone's conversation while an empty one is free.
MIN_SHARED = 16


# -- the cache -----------------------------------------------------------------
class Cache:
    """Keys and values of every layer for the rows of the batch, in one
    tensor [layers, 2, rows, kv_heads, length, head_dim]. It grows by
    doubling (in rows and in length) so that a short chat does not reserve
    the whole context. When the model goes idle it shrinks to the row freed
    last (`keep`): at most one context's keys and values (TeenyTinyLlama-160m
    in fp32: 74 KB a token), which stay until the model is unloaded."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, context: int,
                 dtype: torch.dtype, device: torch.device):
        self.geometry = (layers, 2, kv_heads, head_dim)
        self.context, self.dtype, self.device = context, dtype, device
        self.kv: torch.Tensor | None = None

    def reserve(self, rows: int, length: int) -> None:
        have_rows, have_len = (self.kv.shape[2], self.kv.shape[4]) if self.kv is not None else (0, 0)
        if rows <= have_rows and length <= have_len:
            return

        def grown(need, have, start, cap):
            size = max(have, start)
            while size < need:
                size *= 2
            return min(size, cap)

        layers, two, heads, dim = self.geometry
        # Zeros, not empty: masked positions are multiplied by 0 and must not be NaN.
        kv = torch.zeros(layers, two, grown(rows, have_rows, 1, MAX_ROWS), heads,
                         grown(length, have_len, MIN_LENGTH, self.context), dim,
                         dtype=self.dtype, device=self.device)
        if self.kv is not None:
            kv[:, :, :have_rows, :, :have_len] = self.kv
        self.kv = kv

    def swap(self, a: int, b: int) -> None:
        self.kv[:, :, [a, b]] = self.kv[:, :, [b, a]]

    def keep(self, row: int, length: int) -> None:
        """Give the memory back, but for row `row`'s first `length`
        positions (to the next doubling), which become row 0."""
        size = MIN_LENGTH
        while size < length:
            size *= 2
        size = min(size, self.context)
        if self.kv.shape[2] > 1 or self.kv.shape[4] > size:
            self.kv = self.kv[:, :, row:row + 1, :, :size].clone()


def shared(held: list[int], ids: list[int]) -> int:
    """How many of the first ids of `ids` `held` starts with: all but the
    last at most, whose logits a prefill computes."""
    n = min(len(held), len(ids) - 1)
    return next((i for i in range(n) if held[i] != ids[i]), n)


class Prefixes:
    """What freed cache rows still hold: for each, the ids whose keys and
    values are in it. A prompt that starts with them (the next of n
    completions, a chat's next turn, an API client sending a conversation
    again) is prefilled from where they end: the keys and values of a
    position depend on the ids up to it alone. Rows are named by whatever
    the compute calls them (a cache row, a llama.cpp sequence id)."""

    def __init__(self):
        self.held: dict[int, tuple[int, list[int]]] = {}   # row -> (when freed, ids)
        self._tick = itertools.count()

    def keep(self, row: int, ids: list[int]) -> None:
        self.held[row] = (next(self._tick), list(ids))

    def swap(self, a: int, b: int) -> None:
        ha, hb = self.held.pop(a, None), self.held.pop(b, None)
        if ha is not None:
            self.held[b] = ha
        if hb is not None:
            self.held[a] = hb

    def take(self, rows, ids: list[int]) -> tuple[int, int]:
        """Of the free `rows`, the one to prefill `ids` into, and how many
        of their first ids it holds (all but the last at most: the prefill
        computes the last one's logits). With fewer than MIN_SHARED shared,
        a row that holds nothing or was freed longest ago, so that recent
        ones stay."""
        rows = list(rows)
        holding = [r for r in rows if r in self.held]
        best = max(holding, key=lambda r: shared(self.held[r][1], ids), default=None)
        k = shared(self.held[best][1], ids) if best is not None else 0
        if k < MIN_SHARED:
            k = 0
            best = min(rows, key=lambda r: self.held[r][0] if r in self.held else -1)
        self.held.pop(best, None)
        return best, k

    def latest(self) -> tuple[int, list[int]] | None:
        """The row freed last and its ids."""
        row = max(self.held, key=lambda r: self.held[r][0], default=None)
        return None if row is None else (row, self.held[row][1])


@dataclass
class Where:
    """Which cache rows one forward pass reads and writes, and where."""
    rows: slice                  # cache rows of the batch, in order
    positions: torch.Tensor      # [batch, n] position of each input token
    length: int                  # attention reads positions [0, length)
    mask: torch.Tensor | None    # [batch, 1, n, length]; None: causal from position 0


def attend(cache: Cache, layer: int, where: Where, q, k, v, scale: float | None = None):
    """Store this step's keys and values, attend over the cache, and return
    [batch, n, heads * head_dim]."""
    keys, values = cache.kv[layer, 0, where.rows], cache.kv[layer, 1, where.rows]
    batch = torch.arange(q.shape[0], device=q.device)[:, None]
    keys[batch, :, where.positions] = k.transpose(1, 2)
    values[batch, :, where.positions] = v.transpose(1, 2)
    keys, values = keys[:, :, :where.length], values[:, :, :where.length]
    out = F.scaled_dot_product_attention(
        q, keys, values, attn_mask=where.mask, is_causal=where.mask is None, scale=scale,
        enable_gqa=keys.shape[1] != q.shape[1])
    return out.transpose(1, 2).flatten(2)


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.unflatten(-1, (-1, head_dim)).transpose(1, 2)


# -- one forward pass per architecture ------------------------------------------
# Each takes token ids [batch, n] and returns the next-token logits of the
# last position [batch, vocab]. They call the model's own modules, so the
# weights are exactly those transformers loaded (and the fast path changed).

def rms(norm, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm in one fused operation instead of eight small ones."""
    return F.rms_norm(x, x.shape[-1:], norm.weight, norm.variance_epsilon)


def llama(model, ids: torch.Tensor, where: Where, cache: Cache) -> torch.Tensor:
    base = model.model
    x = base.embed_tokens(ids)
    cos, sin = base.rotary_emb(x, where.positions)
    for i, layer in enumerate(base.layers):
        a = layer.self_attn
        h = rms(layer.input_layernorm, x)
        if hasattr(a, "qkv_proj"):   # stacked by fastpath.fuse
            qkv = a.qkv_proj(h).split([a.q_proj.out_features, a.k_proj.out_features,
                                       a.v_proj.out_features], dim=-1)
        else:
            qkv = (a.q_proj(h), a.k_proj(h), a.v_proj(h))
        q, k, v = (heads(t, a.head_dim) for t in qkv)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        x = x + a.o_proj(attend(cache, i, where, q, k, v, a.scaling))
        x = x + layer.mlp(rms(layer.post_attention_layernorm, x))
    return model.lm_head(rms(base.norm, x[:, -1]))


def gpt2(model, ids: torch.Tensor, where: Where, cache: Cache) -> torch.Tensor:
    t = model.transformer
    x = t.wte(ids) + t.wpe(where.positions)
    for i, block in enumerate(t.h):
        a = block.attn
        qkv = a.c_attn(block.ln_1(x)).split(a.split_size, dim=2)
        q, k, v = (heads(p, a.head_dim) for p in qkv)
        x = x + a.c_proj(attend(cache, i, where, q, k, v))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(t.ln_f(x[:, -1]))


FORWARDS: dict[str, Callable] = {"llama": llama, "gpt2": gpt2}


class Torch:
    """A decoder's compute in torch: the model's forward (FORWARDS) over the
    engine's own cache. The Decoder asks its compute for seven things, so
    that another one (llamacpp.Compute) can take its place."""

    def __init__(self, m: "Loaded"):
        self.cache = new_cache(m)   # refuses an architecture with no forward here
        self.model = base_model(m.model)
        self.arch = self.model.config.model_type
        self.context = self.cache.context   # tokens a row may hold
        self.prefixes = Prefixes()

    def reserve(self, rows: int, length: int) -> None:
        self.cache.reserve(rows, length)

    def reuse(self, row: int, ids: list[int]) -> int:
        """Make row `row` (and those after it, free) ready for the prompt
        `ids`: the freed row holding most of its start becomes row `row`.
        Returns how many of its first ids that row holds."""
        best, k = self.prefixes.take(range(row, self.cache.kv.shape[2]), ids)
        if best != row:
            self.cache.swap(best, row)
            self.prefixes.swap(best, row)
        return k

    def forward(self, ids: torch.Tensor, where: Where) -> torch.Tensor:
        return FORWARDS[self.arch](self.model, ids, where, self.cache)

    def copy(self, src: int, dst: int, k: int) -> None:
        """Row `dst` gets row `src`'s first `k` positions."""
        self.cache.kv[:, :, dst, :, :k] = self.cache.kv[:, :, src, :, :k]

    def move(self, src: int, dst: int) -> None:
        """Row `dst` takes over row `src`'s request, and `src` holds what
        `dst` held, for the decoder to free."""
        self.cache.swap(src, dst)

    def free(self, row: int, ids: list[int]) -> None:
        """Row `row` is no longer in use; it holds the keys and values of `ids`."""
        self.prefixes.keep(row, ids)

    def idle(self) -> None:
        """Give the memory back, but for the row freed last: the next
        completion or chat turn starts with what it holds."""
        latest, self.prefixes = self.prefixes.latest(), Prefixes()
        if latest is not None:
            row, ids = latest
            try:
                self.cache.keep(row, len(ids))   # a copy of the row: memory, while the old cache lives
                self.prefixes.keep(0, ids)
                return
            except (RuntimeError, MemoryError):   # out of memory: this runs outside any request
                pass
        self.cache.kv = None


def base_model(model):
    """The causal LM under a PEFT wrapper (the 4-bit tweet adapter stays wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def kv_geometry(c) -> tuple[int, int]:
    """Key/value heads and their width, from a model's config."""
    return (getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


def new_cache(m: "Loaded") -> Cache:
    c = base_model(m.model).config
    if c.model_type not in FORWARDS:
        raise ValueError(f"Streaming is not implemented for {c.model_type!r} models.")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or getattr(c, "reorder_and_upcast_attn", False):
        raise ValueError("GPT-2 attention variants are not supported.")
    kv_heads, head_dim = kv_geometry(c)
    dtype = next(p.dtype for p in m.model.parameters() if p.is_floating_point())
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = m.dtype   # 4-bit weights compute in the engine's dtype
    context = min(m.spec.max_input_tokens, c.max_position_embeddings)
    return Cache(c.num_hidden_layers, kv_heads, head_dim, context, dtype, m.device)


# -- the worker ------------------------------------------------------------------
@dataclass(eq=False)
class Request:
    """One prompt being decoded. Its tokens arrive on `out` (as `Drawn`),
    then None (finished) or the exception that stopped it."""
    ids: list[int]
    s: Sampling
    stop: frozenset[int]
    cancel: threading.Event
    out: SimpleQueue = field(default_factory=SimpleQueue)
    released: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator = field(default_factory=torch.Generator)
    seen: torch.Tensor | None = None   # prompt + new ids, for the repetition penalty
    new: int = 0                       # tokens generated

    def __post_init__(self):
        if self.s.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.s.seed)
        self.seen = torch.tensor(self.ids + [0] * self.s.max_new_tokens)

    @property
    def length(self) -> int:
        """Tokens in the cache: the prompt and every new token but the last,
        which is the next step's input."""
        return len(self.ids) + self.new - 1

    def finish(self, item=None) -> None:
        self.out.put(item)
        self.released.set()


class Decoder:
    """The batch of one model. The engine's worker (worker.py) gives it turns
    while it is busy: each turn prefills at most one waiting prompt (so that
    a long prompt delays the others by one prefill only), then decodes one
    token for every row. Other work on the worker (a classification, a
    perplexity, another model's turn) runs between turns."""

    def __init__(self, m: "Loaded", max_rows: int = MAX_ROWS, compute=None):
        self.m, self.max_rows = m, max_rows
        self.compute = compute or Torch(m)
        self.rows: list[Request] = []            # row i is cache row i (worker only)
        self._waiting: deque[Request] = deque()
        self._guard = threading.Lock()
        self.sizes: deque[int] = deque(maxlen=1000)   # rows per step, for tests and logs
        self.reused: deque[int] = deque(maxlen=1000)  # prompt ids not computed again, per prefill

    @property
    def busy(self) -> bool:
        return bool(self.rows or self._waiting)

    def submit(self, ids: list[int], s: Sampling, cancel: threading.Event | None = None,
               stop: frozenset[int] | None = None) -> Request:
        if not 0 < len(ids) < self.compute.context:
            raise ValueError(f"A prompt must have 1 to {self.compute.context - 1} tokens for "
                             f"{self.m.spec.title}; this one has {len(ids)}.")
        if stop is None:
            stop = end_tokens(self.m)
        request = Request(list(ids), s, frozenset(stop), cancel or threading.Event())
        with self._guard:
            self._waiting.append(request)
        self.m.worker.wake(self)
        return request

    def turn(self) -> None:
        newcomer = None
        try:
            with self._guard:
                self._drop_cancelled()
                newcomer = (self._waiting.popleft()
                            if self._waiting and len(self.rows) < self.max_rows else None)
            if newcomer is not None and not self._admit(newcomer):
                newcomer = None
            if self.rows and newcomer not in self.rows:
                self._step()
            elif len(self.rows) > 1:
                self._step(skip_last=True)
        except BaseException as exc:   # every request in the batch gets the error
            for r in self.rows + ([newcomer] if newcomer is not None else []):
                if not r.released.is_set():
                    r.finish(exc)
            self.rows = []
        if not self.rows:
            self.compute.idle()

    def _drop_cancelled(self) -> None:
        for r in [r for r in self._waiting if r.cancel.is_set()]:
            self._waiting.remove(r)
            r.finish()
        for r in [r for r in self.rows if r.cancel.is_set()]:
            self._release(r)

    def _release(self, r: Request) -> None:
        i, last = self.rows.index(r), len(self.rows) - 1
        if i != last:   # keep the rows packed: the last one takes the freed row
            self.compute.move(last, i)
            self.rows[i] = self.rows[last]
        self.rows.pop()
        self.compute.free(last, r.seen[:r.length].tolist())
        r.finish()

    def _admit(self, r: Request) -> bool:
        """Prefill `r` into the batch. If that fails, `r` alone gets the
        error (a prompt too long, memory for one more row): the rows already
        decoding go on."""
        try:
            self._prefill(r)
            return True
        except BaseException as exc:
            if self.rows and self.rows[-1] is r:
                self.rows.pop()
            r.finish(exc)
            return False

    def _prefill(self, r: Request) -> None:
        n, row, device = len(r.ids), len(self.rows), self.m.device
        self.compute.reserve(row + 1, n + 1)
        k = self.compute.reuse(row, r.ids)   # the prompt's first k ids are in row `row` already
        # A row still decoding may hold more of it: the next of n completions
        # decodes beside the first. Its keys and values are copied.
        src, held = max(((i, shared(q.seen[:q.length].tolist(), r.ids)) for i, q in enumerate(self.rows)),
                        key=lambda t: t[1], default=(0, 0))
        if held >= MIN_SHARED and held > k:
            self.compute.copy(src, row, held)
            k = held
        positions = torch.arange(k, n, device=device)[None]
        # After k held positions the mask is causal from k (SDPA's is_causal starts at 0).
        mask = (torch.arange(n, device=device) <= positions[0, :, None])[None, None] if k else None
        where = Where(slice(row, row + 1), positions, n, mask)
        logits = self.compute.forward(torch.tensor([r.ids[k:]], device=device), where)
        self.reused.append(k)
        self.rows.append(r)
        self._emit([r], logits)

    def _step(self, skip_last: bool = False) -> None:
        """One token for every row (but a row prefilled this turn, which already has its first)."""
        rows = self.rows[:-1] if skip_last else self.rows
        self.sizes.append(len(rows))
        length = max(r.length for r in rows) + 1
        self.compute.reserve(len(rows), length)
        device = self.m.device
        ids = torch.tensor([[int(r.seen[r.length])] for r in rows], device=device)
        positions = torch.tensor([[r.length] for r in rows], device=device)
        mask = (torch.arange(length, device=device)[None] <= positions)[:, None, None]
        where = Where(slice(0, len(rows)), positions, length, mask)
        logits = self.compute.forward(ids, where)
        self._emit(rows, logits)

    def _emit(self, rows: list[Request], logits: torch.Tensor) -> None:
        logits = logits.float().cpu()
        done = []
        for r, row in zip(rows, logits):
            drawn = draw(row, r.seen[:len(r.ids) + r.new], r.s, r.generator)
            r.seen[len(r.ids) + r.new] = drawn.id
            r.new += 1
            r.out.put(drawn)
            if (drawn.id in r.stop or r.new >= r.s.max_new_tokens
                    or r.length + 1 >= self.compute.context):
                done.append(r)
        for r in done:
            self._release(r)


def end_tokens(m: "Loaded") -> frozenset[int]:
    eos = m.model.generation_config.eos_token_id if getattr(m.model, "generation_config", None) else None
    eos = eos if eos is not None else m.tokenizer.eos_token_id
    return frozenset(eos if isinstance(eos, (list, tuple)) else [eos])


_making = threading.Lock()


def decoder_for(m: "Loaded") -> Decoder:
    """The model's decoder, made on first use and kept with the model."""
    with _making:
        if m.decoder is None:
            m.decoder = Decoder(m)
        return m.decoder
