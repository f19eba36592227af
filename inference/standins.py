"""Stand-in models: the real classes, config fields, special tokens, ids and
label maps of every registry entry, with random weights (the generative
ones then trained for a few seconds on a page of our own text, so that their
distributions are not flat).

No machine of this project can download the real weights, so tests,
benchmarks and offline demos run on these. Tiny shapes are the default; the
full-size shapes exist for benchmarks.

    python -m inference.standins DIR [--full-size] [--only KEY ...]
"""

from __future__ import annotations

import argparse
import functools
import math
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (AutoConfig, AutoModelForCausalLM,
                          AutoModelForSequenceClassification, BertTokenizer,
                          GPT2Tokenizer, GenerationConfig, LlamaTokenizer)

from .loading import BUILDING
from .registry import CLASSIFY, SCORE, REGISTRY, ModelSpec

CORPUS = Path(__file__).with_name("standin_corpus.txt")
CHECKPOINTS = "checkpoints"   # a stand-in's folder of training snapshots, by revision
VERSION = "v6"  # bump when the stand-ins change, so caches rebuild

# Configs: the published fields of each shape; "tiny" overrides only sizes,
# keeping heads of 32 dimensions where vLLM serves them in the tests (the
# real ones have 64; vLLM's CPU attention takes 32 and up).
_LLAMA_COMMON = dict(
    model_type="llama", hidden_act="silu", rms_norm_eps=1e-05,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    attention_bias=False, tie_word_embeddings=False, vocab_size=32000,
    max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
# The published TeenyTinyLlama configs say use_cache false; the engine turns
# it back on at inference, so the stand-ins keep the published value.
_TTL = dict(_LLAMA_COMMON, pad_token_id=3, use_cache=False, tokenizer="ttl")
SHAPES = {
    "ttl-160m": dict(
        config=dict(_TTL, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, num_key_value_heads=12),
        tiny=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2)),
    "ttl-460m": dict(
        config=dict(_TTL, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, num_key_value_heads=16),
        tiny=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                  num_attention_heads=3, num_key_value_heads=3)),
    "tinyllama-1.1b": dict(
        config=dict(_LLAMA_COMMON, hidden_size=2048, intermediate_size=5632,
                    num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                    tokenizer="llama2"),
        # 16-dimension heads: GQA at 64 wide (vLLM serves it only full-size).
        tiny=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)),
    "aira-124m": dict(
        config=dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024,
                    n_inner=None, activation_function="gelu_new", vocab_size=50261,
                    tie_word_embeddings=True, bos_token_id=50257, eos_token_id=50258,
                    pad_token_id=50260, use_cache=False, tokenizer="aira"),
        tiny=dict(n_embd=64, n_layer=2, n_head=2)),
    "bert-base": dict(
        config=dict(model_type="bert", hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072,
                    max_position_embeddings=512, type_vocab_size=2, vocab_size=29794,
                    pad_token_id=0, num_labels=1, tokenizer="bert"),
        tiny=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128)),
}

# Tokenizers of the same kind as the real ones, trained on the corpus.
TTL_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]            # ids 0..3
AIRA_SPECIALS = {"bos_token": "<|startofinstruction|>",       # 50257
                 "eos_token": "<|endofcompletion|>",          # 50258
                 "sep_token": "<|endofinstruction|>",         # 50259
                 "pad_token": "<|pad|>"}                      # 50260
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# TinyLlama-1.1B-Chat's Zephyr-style template: each message is a role tag,
# a newline, its content, eos and a newline.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def _corpus_lines() -> list[str]:
    return [l for l in CORPUS.read_text(encoding="utf-8").splitlines() if l.strip()]


def _train_bpe(specials: list[str], vocab_size: int, byte_level: bool) -> dict:
    """Train a BPE on the corpus; return its vocab and merges."""
    if byte_level:   # GPT-2 style
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:            # SentencePiece style, with byte fallback like Llama's
        # Split on spaces while training, as SentencePiece does, so no merge
        # spans two words; the tokenizer then runs Llama's split=False.
        pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        alphabet = []
        specials = specials + [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=not byte_level, unk_token=None if byte_level else "<unk>"))
    tok.pre_tokenizer = pre
    tok.train_from_iterator(_corpus_lines(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
        show_progress=False))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(p) if isinstance(p, list) else tuple(p.split(" ")) for p in model["merges"]]
    return {"vocab": model["vocab"], "merges": merges}


# Each tokenizer holds as many entries as its configs' vocab_size (Aira's
# four added tokens come after GPT-2's 50257), as the real ones do: servers
# such as vLLM decode any id the model can emit. The ids past what the corpus
# trains are fillers no text encodes to.
TOKENIZER_SIZES = {"ttl": 32000, "llama2": 32000, "aira": 50257, "bert": 29794}
FILLER = {"bert": "[unused{}]"}   # BERT's own name for them; the BPEs': <unused{}>


def _filled(vocab: dict[str, int], kind: str) -> dict[str, int]:
    name = FILLER.get(kind, "<unused{}>")
    start = max(vocab.values()) + 1
    return {**vocab, **{name.format(i): i for i in range(start, TOKENIZER_SIZES[kind])}}


def is_filler(token: str) -> bool:
    return token.startswith(("<unused", "[unused"))


@functools.cache
def _tokenizer_files(kind: str) -> dict:
    files = {
        "ttl": lambda: _train_bpe(TTL_SPECIALS, 2000, byte_level=False),
        "llama2": lambda: _train_bpe(TTL_SPECIALS[:3], 2000, byte_level=False),
        "aira": lambda: _train_bpe(["<|endoftext|>"], 1500, byte_level=True),
        "bert": _train_wordpiece,
    }[kind]()
    return {**files, "vocab": _filled(dict(files["vocab"]), kind)}


def build_tokenizer(kind: str):
    files = _tokenizer_files(kind)
    if kind == "ttl":
        tok = LlamaTokenizer(vocab=dict(files["vocab"]), merges=list(files["merges"]),
                             pad_token="<pad>", add_bos_token=True, legacy=False,
                             padding_side="right")
    elif kind == "llama2":
        tok = LlamaTokenizer(vocab=dict(files["vocab"]), merges=list(files["merges"]),
                             add_bos_token=True, legacy=False)
        tok.pad_token = "</s>"
        tok.chat_template = ZEPHYR_TEMPLATE
    elif kind == "aira":
        vocab = dict(files["vocab"])
        # The real ids: Aira's four tokens were appended after GPT-2's 50257.
        for i, t in enumerate(AIRA_SPECIALS.values()):
            vocab[t] = 50257 + i
        tok = GPT2Tokenizer(vocab=vocab, merges=list(files["merges"]),
                            unk_token="<|endoftext|>", **AIRA_SPECIALS)
    else:   # cased WordPiece, like BERTimbau's
        tok = BertTokenizer(vocab=dict(files["vocab"]), do_lower_case=False, strip_accents=False)
    return tok


def _train_wordpiece() -> dict:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_corpus_lines(), trainers.WordPieceTrainer(
        vocab_size=1500, special_tokens=BERT_SPECIALS, show_progress=False))
    return {"vocab": json.loads(tok.to_str())["model"]["vocab"]}


def config_for(spec: ModelSpec, full_size: bool):
    """`spec`'s config: the published fields of its shape, tiny unless `full_size`."""
    shape = SHAPES[spec.shape]
    fields = dict(shape["config"])
    fields.pop("tokenizer")
    if not full_size:
        fields.update(shape["tiny"])
    model_type = fields.pop("model_type")
    if spec.task == CLASSIFY:
        fields.update(num_labels=len(spec.labels), problem_type="single_label_classification",
                      id2label=dict(enumerate(spec.labels)),
                      label2id={l: i for i, l in enumerate(spec.labels)})
    return AutoConfig.for_model(model_type, **fields)


def _training_text(spec: ModelSpec, tok) -> list[int]:
    """The corpus as the model would see it: plain text, or for Aira each
    line answered by the next in its instruction format."""
    lines = _corpus_lines()
    if spec.prompt_format != "aira":
        return tok("\n".join(lines), add_special_tokens=False)["input_ids"]
    turns = "".join(tok.bos_token + q + tok.sep_token + a + tok.eos_token
                    for q, a in zip(lines, lines[1:]))
    return tok(turns, add_special_tokens=False)["input_ids"]


def _train_briefly(model, tok, spec: ModelSpec, steps: int, seed: int,
                   after_step=lambda step: None) -> None:
    """A few steps on the corpus so that output distributions are not flat
    and sampled text is made of real tokens; `after_step(k)` is called
    after the k-th step (1-based), to save snapshots.

    The tokenizers produce ~2,000 of the configs' 32,000 (or 50,261) ids;
    the rest are fillers (`is_filler`). The output rows of the ids they
    never produce are set to zero, so those
    logits are exactly 0, and the loss is the full softmax written with that
    fact (the zero logits enter as one term, n * e^0): the same objective at
    a sixteenth of the cost, which is what makes a build take seconds."""
    g = torch.Generator().manual_seed(seed)
    data = torch.tensor(_training_text(spec, tok))
    used = torch.tensor(sorted(i for t, i in tok.get_vocab().items() if not is_filler(t)))
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        keep = head[used].clone()
        head.zero_()
        head[used] = keep
    index = torch.full((head.shape[0],), -1, dtype=torch.long)
    index[used] = torch.arange(len(used))
    unused_rows = index < 0
    unused = math.log(head.shape[0] - len(used))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    # Long windows: GPT-2 learns its position embeddings, and answers run
    # for a couple of hundred tokens.
    block, batch = 192, 4
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(data) - block - 1, (batch,), generator=g)
        x = torch.stack([data[s:s + block + 1] for s in starts])
        hidden = model.base_model(input_ids=x[:, :-1]).last_hidden_state
        logits = hidden @ head[used].t()
        log_z = torch.logaddexp(logits.logsumexp(-1), torch.tensor(unused))
        picked = logits.gather(-1, index[x[:, 1:]].unsqueeze(-1)).squeeze(-1)
        loss = (log_z - picked).mean()
        loss.backward()
        with torch.no_grad():   # the unused rows stay exactly zero
            if head.grad is not None:
                head.grad[unused_rows] = 0
        opt.step()
        opt.zero_grad()
        after_step(step)
    model.eval()


def snapshot_steps(spec: ModelSpec, steps: int) -> dict[int, list[str]]:
    """When a stand-in's one short training run saves each published
    checkpoint: stepK after K / (the last published step) of its steps, so
    that its checkpoints, like the real ones, get better as training goes
    on ("main" is the end of the run). Training step -> revisions."""
    published = {r: int(r.removeprefix("step")) for r in spec.revisions if r.startswith("step")}
    out: dict[int, list[str]] = {}
    for revision, k in published.items():
        out.setdefault(max(1, round(steps * k / max(published.values()))), []).append(revision)
    return out


def build(spec: ModelSpec, out: Path, full_size: bool = False, train_steps: int | None = None) -> Path:
    """Write `spec`'s stand-in to `out` (atomically: a half-built directory is
    never visible to a concurrent loader)."""
    out = Path(out)
    seed = sum(map(ord, spec.key))
    torch.manual_seed(seed)
    kind = SHAPES[spec.shape]["config"]["tokenizer"]
    tok = build_tokenizer(kind)
    config = config_for(spec, full_size)
    classifier = spec.task in (CLASSIFY, SCORE)
    with BUILDING:
        model = (AutoModelForSequenceClassification if classifier
                 else AutoModelForCausalLM).from_config(config)
    if not classifier:
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id, use_cache=config.use_cache)
    model.config.standin = {"version": VERSION, "full_size": full_size}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        steps = 0 if classifier else (train_steps if train_steps is not None
                                      else (0 if full_size else 120))
        if steps:
            # The training checkpoints, saved as the run passes them (an
            # untrained full-size stand-in serves every checkpoint from one folder).
            saves = snapshot_steps(spec, steps)

            def save(step: int) -> None:
                for revision in saves.get(step, []):
                    model.save_pretrained(tmp / CHECKPOINTS / revision)
                    tok.save_pretrained(tmp / CHECKPOINTS / revision)
            _train_briefly(model, tok, spec, steps, seed, save)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if spec.adapter_setting:
            _build_adapter(model, tmp / "adapter", seed)
        if out.exists():    # a concurrent builder won; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build_adapter(model, out: Path, seed: int) -> None:
    """The tweet adapter's shape (seed 002): LoRA rank 8, alpha 16 on k_proj
    and v_proj. Its weights are non-zero so that it really changes scores."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed + 1)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["k_proj", "v_proj"],
                      task_type="CAUSAL_LM", init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(out)
    peft_model.unload()   # leave the base model as it was


def default_dir(full_size: bool = False, root: str | Path | None = None) -> Path:
    """Where stand-ins live: `root` (TTL_STANDIN_DIR) as it is, else the user's cache."""
    if root:
        return Path(root)
    cache = Path.home() / ".cache" / "ttl-playground" / "standins"
    return cache / f"{VERSION}-{'full' if full_size else 'tiny'}"


def ensure(key: str, full_size: bool = False, root: Path | None = None,
           revision: str = "main") -> Path:
    """The directory of `key`'s stand-in at `revision`, building it on first
    use: a training checkpoint's snapshot where the build saved one, else
    the end of its training run."""
    out = default_dir(full_size, root) / key
    if not _current(out / "config.json"):
        shutil.rmtree(out, ignore_errors=True)   # an older version's: build again
        build(REGISTRY[key], out, full_size=full_size)
    snapshot = out / CHECKPOINTS / revision
    return snapshot if revision != "main" and snapshot.is_dir() else out


def _current(config: Path) -> bool:
    try:
        return json.loads(config.read_text())["standin"]["version"] == VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, nargs="?", help="output directory (default: the app's cache)")
    p.add_argument("--full-size", action="store_true", help="the real shapes, for benchmarks")
    p.add_argument("--only", nargs="*", choices=list(REGISTRY), help="registry keys to build")
    args = p.parse_args(argv)
    from .settings import Settings
    root = default_dir(args.full_size, args.dir or Settings.from_env().standin_dir)
    for key in args.only or REGISTRY:
        print(ensure(key, args.full_size, root))


if __name__ == "__main__":
    main()
