"""llama.cpp beside the engine: a Llama model of ours written as GGUF, and a
llama.cpp context decoding it. Two users:

- the `llamacpp` backend (backends.py): the model's batched decoder
  (decoder.py) with `Compute`, a llama.cpp context with one sequence per
  request, in place of its torch compute; sampling, "Why this token?" and
  cancelling stay the decoder's own;
- the benchmark's llama.cpp column (`open_model`, `greedy`): llama.cpp as a
  CPU user runs it, on the same full-size stand-in as the engine, so that
  the ratio is measured in one run.

Optional: `pip install -r requirements-llamacpp.txt` (README, Performance). Nothing
else in the app needs it; `available()` says whether it is there.

The GGUF is written here from the model's own tensors (the `gguf` package's
writer and its Q8_0 quantiser, which is llama.cpp's, bit for bit), not by
llama.cpp's convert script: that script is not installed with the wheel,
and it refuses a tokenizer whose pre-tokenizer it does not know (the
stand-ins' own BPE). llama.cpp only needs the vocabulary's pieces and ids:
the app tokenizes, and hands it ids.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .decoder import Prefixes, Where, shared

KINDS = ("q8_0", "f32")


def available() -> bool:
    """llama-cpp-python and gguf are importable."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
        return True
    except ImportError:
        return False


def preferred() -> bool:
    """Whether `auto` gives a CPU's Llama decoders to llama.cpp (the
    `llamacpp` backend): where the extra is installed and the CPU has no
    VNNI. There that backend decodes one stream about twice as fast as the
    local road and is even with it or ahead on four streams and long
    prompts; with VNNI the local road wins those two (docs/performance.md)."""
    from .fastpath import has_vnni
    return available() and not has_vnni()


def gguf_path(model_dir: str | Path, kind: str = "q8_0") -> Path:
    """Where the GGUF of a model folder is kept: beside its weights."""
    return Path(model_dir) / f"model-{kind}.gguf"


def _hf_to_ggml_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q/k rows from transformers' rotate-half order (a head's first half of
    dimensions pairs with its second half) to llama.cpp's interleaved pairs,
    as llama.cpp's own converter permutes them."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model) -> dict[str, torch.Tensor]:
    """GGUF tensor names -> fp32 weights of a LlamaForCausalLM."""
    c, base = model.config, model.model
    out = {"token_embd.weight": base.embed_tokens.weight, "output_norm.weight": base.norm.weight,
           "output.weight": model.lm_head.weight}
    for i, layer in enumerate(base.layers):
        a, mlp = layer.self_attn, layer.mlp
        out.update({
            f"blk.{i}.attn_norm.weight": layer.input_layernorm.weight,
            f"blk.{i}.attn_q.weight": _hf_to_ggml_rope(a.q_proj.weight, c.num_attention_heads),
            f"blk.{i}.attn_k.weight": _hf_to_ggml_rope(a.k_proj.weight, c.num_key_value_heads),
            f"blk.{i}.attn_v.weight": a.v_proj.weight,
            f"blk.{i}.attn_output.weight": a.o_proj.weight,
            f"blk.{i}.ffn_norm.weight": layer.post_attention_layernorm.weight,
            f"blk.{i}.ffn_gate.weight": mlp.gate_proj.weight,
            f"blk.{i}.ffn_up.weight": mlp.up_proj.weight,
            f"blk.{i}.ffn_down.weight": mlp.down_proj.weight,
        })
    return {k: v.detach().float() for k, v in out.items()}


def _vocabulary(tokenizer, size: int) -> tuple[list[str], list[int]]:
    """Every id's piece and its kind (control, byte, normal), as llama.cpp's
    SentencePiece vocabulary expects them."""
    import gguf
    special = set(tokenizer.all_special_ids)
    pieces, types = [], []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
        piece = piece if piece is not None else f"<unused{i}>"
        pieces.append(piece)
        if i in special:
            types.append(gguf.TokenType.CONTROL)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return pieces, types


def convert(model_dir: str | Path, kind: str = "q8_0", adapter: str | Path | None = None,
            out: Path | None = None) -> Path:
    """The GGUF of the Llama model in `model_dir` (a `save_pretrained`
    folder; a LoRA `adapter` is merged in), written once and kept at
    `gguf_path` unless `out` says where."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = Path(out) if out else gguf_path(model_dir, kind)
    weights = [p.stat().st_mtime for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin")]
    if out.exists() and out.stat().st_mtime >= max(weights, default=0):   # newer than the weights
        return out
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return write(model, AutoTokenizer.from_pretrained(model_dir), out, kind, Path(model_dir).name)


def fingerprint(model, *extra: str) -> str:
    """A short name for a model's weights and `extra`: every tensor's name,
    shape, first values and sums (a retrained layer changes them), without
    hashing gigabytes (TinyLlama: ~0.2 s)."""
    h = hashlib.sha256("|".join(extra).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t = t.detach().reshape(-1)
            h.update(f"{name}{tuple(t.shape)}{float(t.sum(dtype=torch.float64))!r}"
                     f"{float(t.abs().sum(dtype=torch.float64))!r}".encode())
            h.update(t[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def write(model, tokenizer, out: Path, kind: str = "q8_0", title: str = "model") -> Path:
    """Write the GGUF of a LlamaForCausalLM (LoRA adapters merged first, as
    the engine's loading does on a CPU) to `out`, atomically. Weights in
    `kind`: q8_0 (every matrix; norms stay f32, as llama.cpp's Q8_0 files)
    or f32."""
    import gguf
    if kind not in KINDS:
        raise ValueError(f"GGUF kind must be one of {KINDS}, got {kind!r}")
    c = model.config
    if c.model_type != "llama":
        raise ValueError(f"llama.cpp conversion is written for Llama models, not {c.model_type!r}.")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope_theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0))

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(fd)   # the writer opens it by name
    tmp = Path(tmp)
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(title)
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(c.num_hidden_layers)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_rope_dimension_count(head_dim)
        w.add_head_count(c.num_attention_heads)
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_rope_freq_base(float(rope_theta))
        w.add_vocab_size(c.vocab_size)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if kind == "q8_0" else gguf.LlamaFileType.ALL_F32)
        pieces, types = _vocabulary(tokenizer, c.vocab_size)
        w.add_tokenizer_model("llama")
        w.add_token_list(pieces)
        w.add_token_scores([0.0] * len(pieces))
        w.add_token_types(types)
        for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "pad_token_id")):
            if isinstance(getattr(c, key, None), int):
                getattr(w, f"add_{name}_token_id")(getattr(c, key))
        for name, t in _tensors(model).items():
            data = t.numpy()
            if kind == "q8_0" and data.ndim == 2:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def weight_bytes_per_token(path: str | Path) -> int:
    """Bytes of weights one decode step reads from the GGUF: every tensor
    but the embedding table (one row per token)."""
    import gguf
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors if t.name != "token_embd.weight")


def open_model(path: str | Path, context: int, threads: int):
    """A llama.cpp context on the GGUF, with every core and a prompt batch
    as long as the context (one prefill call)."""
    from llama_cpp import Llama
    return Llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context,
                 n_threads=threads, n_threads_batch=threads, verbose=False)


def _last_logits(llm) -> np.ndarray:
    """The logits llama.cpp computed for the last token evaluated (a view
    of its buffer: read it before the next call)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def logits(llm, ids: list[int]) -> np.ndarray:
    """The next-token logits after `ids`, from a fresh sequence."""
    llm.reset()
    llm.eval(ids)
    return _last_logits(llm).copy()


def greedy(llm, ids: list[int], new: int, on_token=None) -> list[int]:
    """`new` tokens after `ids`, each the most likely (no end token stops
    it); `on_token(id)` is called as each is drawn. The ids the context
    holds from the last call that start `ids` are not evaluated again, as
    llama-cpp-python's own completions do."""
    llm.n_tokens = shared(list(llm.input_ids[:llm.n_tokens]), ids)   # eval() drops the rest
    out, step = [], list(ids[llm.n_tokens:])
    for _ in range(new):
        llm.eval(step)
        token = int(np.argmax(_last_logits(llm)))
        out.append(token)
        if on_token:
            on_token(token)
        step = [token]
    return out


# -- the backend's compute -------------------------------------------------------
def gguf_for(m, folder: Path, kind: str = "q8_0") -> Path:
    """The GGUF of a loaded model (before the fast path changes its
    weights), written once into `folder` and found there on later starts
    by the fingerprint of its weights. One file per checkpoint: writing a
    new one (other weights under the same name) deletes the old."""
    stem = f"{m.spec.key.replace('/', '--')}@{m.revision}-"
    out = Path(folder) / f"{stem}{fingerprint(m.model, m.source)}-{kind}.gguf"
    if not out.exists():
        write(m.model, m.tokenizer, out, kind, m.spec.title)
        for old in Path(folder).glob(f"{stem}*-{kind}.gguf"):
            if old != out:
                old.unlink(missing_ok=True)
    return out


class Compute:
    """The compute of a model's decoder (in place of decoder.Torch): a
    llama.cpp context in which each decoder row is one sequence. The
    context and its key/value cache (rows x context cells, f16) are made
    with it and kept while the model is: making one takes ~0.15 s, which a
    request after every idle spell would wait for.

    Each sequence has a cache of its own in llama.cpp, so copying one to
    another copies it whole (75 MB for TeenyTinyLlama-160m). The decoder's
    rows therefore map to sequence ids (`seq`), and a row that moves takes
    its sequence id with it instead. A freed sequence keeps what it holds
    (`prefixes`) until a prompt that does not start the same way needs it."""

    def __init__(self, path: Path, rows: int, context: int, threads: int):
        import llama_cpp as lib
        # llama-cpp-python prints llama.cpp's log through this logger: errors only.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self.lib, self.path, self.rows, self.context = lib, path, rows, context
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self.model:
            raise ValueError(f"llama.cpp could not load {path}.")
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        p = lib.llama_context_default_params()
        p.n_ctx, p.n_seq_max = rows * context, rows   # `context` cells per sequence
        p.n_batch, p.n_ubatch = context, min(512, context)   # a whole prompt in one call
        p.n_threads = p.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, p)
        if not self.ctx:   # the model is freed by __del__
            raise MemoryError("llama.cpp could not make a context (memory for the key/value cache).")
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(context, 0, 1)
        self.seq = list(range(rows))   # decoder row -> llama.cpp sequence id
        self.prefixes = Prefixes()     # by sequence id

    def reserve(self, rows: int, length: int) -> None:
        """Nothing to do: every sequence has its whole context already."""

    def reuse(self, row: int, ids: list[int]) -> int:
        """Give row `row` the free sequence holding most of the start of
        `ids`, without what it holds after that; returns how many ids it holds."""
        seq, k = self.prefixes.take(self.seq[row:], ids)
        j = self.seq.index(seq)
        self.seq[row], self.seq[j] = seq, self.seq[row]
        self.lib.llama_memory_seq_rm(self.memory, seq, k, -1)
        return k

    def forward(self, ids: torch.Tensor, where) -> torch.Tensor:
        """The next-token logits [rows, vocab] after `ids` [rows, n], row r
        being decoder row `where.rows.start + r`, at `where.positions`."""
        lib, b = self.lib, self.batch
        tokens, positions = ids.tolist(), where.positions.tolist()
        seqs = self.seq[where.rows.start:where.rows.start + len(tokens)]
        # Rows in the order of their sequence ids: llama.cpp splits a batch
        # wherever the next sequence id is not one more than the last, and
        # each part reads every weight again (4 rows in sequences 1, 3, 0, 2:
        # 38 ms a step against 25 in order, TeenyTinyLlama-160m, 2 vCPUs).
        # Ids with a gap (0, 1, 3: rows have come and gone) still go in two
        # parts (3 rows: ~+20 %).
        last, i = [0] * len(tokens), 0
        for r in sorted(range(len(tokens)), key=seqs.__getitem__):
            for j, (token, p) in enumerate(zip(tokens[r], positions[r])):
                b.token[i], b.pos[i], b.n_seq_id[i] = token, p, 1
                b.seq_id[i][0] = seqs[r]
                b.logits[i] = j == len(tokens[r]) - 1
                i += 1
            last[r] = i - 1
        b.n_tokens = i
        if (code := lib.llama_decode(self.ctx, b)) != 0:
            raise RuntimeError(f"llama.cpp could not decode this batch (llama_decode returned {code}).")
        return torch.from_numpy(np.stack([
            np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, k), shape=(self.vocab,))
            for k in last]))   # np.stack copies out of llama.cpp's buffer

    def copy(self, src: int, dst: int, k: int) -> None:
        """Row `dst` gets row `src`'s first `k` positions. llama.cpp copies
        a sequence into another's cache only whole (a memory copy at the
        next decode: 75 MB for TeenyTinyLlama-160m, milliseconds against a
        prefill's second); the rest is dropped after."""
        s, d = self.seq[src], self.seq[dst]
        self.lib.llama_memory_seq_cp(self.memory, s, d, -1, -1)
        self.lib.llama_memory_seq_rm(self.memory, d, k, -1)

    def move(self, src: int, dst: int) -> None:
        """Row `src` becomes row `dst`; `dst`'s old sequence is `src`'s now,
        for the decoder to free."""
        self.seq[src], self.seq[dst] = self.seq[dst], self.seq[src]

    def free(self, row: int, ids: list[int]) -> None:
        """Row `row` is no longer in use; its sequence holds `ids`."""
        self.prefixes.keep(self.seq[row], ids)

    def idle(self) -> None:
        """Nothing to give back: the sequences' cells are llama.cpp's for
        as long as the context lives, and the freed ones keep their prefixes."""

    def __del__(self):
        # Each handle alone: one that failed (or was never made) leaves the others to free.
        for name, free in (("batch", "llama_batch_free"), ("ctx", "llama_free"),
                           ("model", "llama_model_free")):
            handle = getattr(self, name, None)
            if handle:
                try:
                    getattr(self.lib, free)(handle)
                except Exception:   # interpreter shutdown: the library may be gone
                    pass
                setattr(self, name, None)


def greedy_streams(compute: Compute, prompts: list[list[int]], new: int) -> list[list[int]]:
    """`new` tokens after each of `prompts` (of one length), each the most
    likely, every stream in a sequence of its own and all of them in one
    `llama_decode` a step: llama.cpp's batch API as its batched examples
    use it, with nothing of the engine's around it (the benchmark's
    llama.cpp column, several streams). Starts from an empty cache."""
    compute.lib.llama_memory_clear(compute.memory, True)
    ids, rows = torch.tensor(prompts), slice(0, len(prompts))
    n = ids.shape[1]
    logits = compute.forward(ids, Where(rows, torch.arange(n).expand(len(prompts), n), n, None))
    out = [logits.argmax(-1)]
    for step in range(n, n + new - 1):
        positions = torch.full((len(prompts), 1), step)
        out.append(compute.forward(out[-1][:, None], Where(rows, positions, step + 1, None)).argmax(-1))
    return torch.stack(out, 1).tolist()
