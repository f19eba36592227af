"""llama.cpp beside the engine: a Llama model of ours written as GGUF, and a
llama.cpp context decoding it. The benchmark's llama.cpp column runs it on
the same full-size stand-in as the engine, so that the ratio to what a CPU
user would pick instead is measured in one run.

Optional: `pip install llama-cpp-python gguf` (README, Performance). Nothing
else in the app needs it; `available()` says whether it is there.

The GGUF is written here from the model's own tensors (the `gguf` package's
writer and its Q8_0 quantiser, which is llama.cpp's, bit for bit), not by
llama.cpp's convert script: that script is not installed with the wheel,
and it refuses a tokenizer whose pre-tokenizer it does not know (the
stand-ins' own BPE). llama.cpp only needs the vocabulary's pieces and ids:
the app tokenizes, and hands it ids.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

KINDS = ("q8_0", "f32")


def available() -> bool:
    """llama-cpp-python and gguf are importable."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
        return True
    except ImportError:
        return False


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
    `gguf_path` unless `out` says where. Weights in `kind`: q8_0 (every
    matrix; norms stay f32, as llama.cpp's Q8_0 files) or f32."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if kind not in KINDS:
        raise ValueError(f"GGUF kind must be one of {KINDS}, got {kind!r}")
    out = Path(out) if out else gguf_path(model_dir, kind)
    weights = [p.stat().st_mtime for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin")]
    if out.exists() and out.stat().st_mtime >= max(weights, default=0):   # newer than the weights
        return out
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if model.config.model_type != "llama":
        raise ValueError(f"llama.cpp conversion is written for Llama models, not {model.config.model_type!r}.")
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    c = model.config
    tok = AutoTokenizer.from_pretrained(model_dir)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope_theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0))

    tmp = Path(tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)[1])
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(Path(model_dir).name)
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
        pieces, types = _vocabulary(tok, c.vocab_size)
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
    it); `on_token(id)` is called as each is drawn."""
    llm.reset()
    out, step = [], list(ids)
    for _ in range(new):
        llm.eval(step)
        token = int(np.argmax(_last_logits(llm)))
        out.append(token)
        if on_token:
            on_token(token)
        step = [token]
    return out
