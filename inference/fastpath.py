"""The CPU fast path: what the engine does to a generative model right after
loading it on a CPU, so that decoding is not bound by per-token overhead.

One setting chooses it: `TTL_FAST` (or `Settings.fast`) = auto | off | int8 | bf16.

- int8: every Linear layer becomes an `Int8Linear`: weights int8 with one
  scale per output channel, activations quantised with one scale per token,
  the product exact in int32 (`torch._int_mm`). Per-token scales are what
  keeps it faithful: `quantize_dynamic`, used before, scaled a whole call's
  activations at once (in 7 bits), so over a 512-token text one loud token
  flattened every other one, label scores moved by 0.06, and a token's
  probability depended on what else shared the batch. Here a token's result
  does not depend on any other row (the products are integers). A model
  that decodes gets `PackedInt8Linear`: the same per-row quantisation on
  fbgemm's product, faster for the few rows of a decode step; without
  VNNI every model gets it, since `torch._int_mm` has no fast kernel there.
- bf16: weights and activations in bfloat16 (28 tokens/s there); worth it
  only where the CPU has native bf16 (avx512_bf16 or AMX) and no int8
  product. Its 8-bit mantissa moves a token's probability by up to ~0.03
  on a 512-token text (int8: under 0.02; tests/test_fidelity.py).
- auto: int8 where a quantised engine exists, else bf16 where the CPU has
  it, else fp32. `python -m inference.bench` measures the roads side by side.

On the int8 and bf16 roads the model is also reshaped for the decode step
(`fuse`: fewer, larger matrix products; GPT-2's Conv1D as Linear) and the
memory of the replaced weights is given back (`release_file_pages`).

On CUDA nothing here applies: the engine loads bf16/fp16 with SDPA attention.
The fidelity of each road against fp32 is `fidelity()`, reported by the
benchmark and checked in tests/test_fastpath.py.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from . import memory

MODES = ("auto", "off", "int8", "bf16")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_int8() -> bool:
    """This torch build multiplies int8 matrices on the CPU."""
    try:
        torch._int_mm(torch.ones(1, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def has_native_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve(mode: str = "auto") -> str:
    """The road to take on this CPU: 'off', 'int8' or 'bf16'."""
    mode = (mode or "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"TTL_FAST must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    if has_int8():
        return "int8"
    return "bf16" if has_native_bf16() else "off"


def cores() -> int:
    """CPUs this process may run on (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fused_linear(parts: list[nn.Linear]) -> nn.Linear:
    """One Linear computing all of `parts` (stacked outputs)."""
    bias = any(p.bias is not None for p in parts)
    out = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=bias,
                    dtype=parts[0].weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([p.weight for p in parts]))
        if bias:
            out.bias.copy_(torch.cat([p.bias if p.bias is not None else
                                      torch.zeros(p.out_features) for p in parts]))
    return out


class Int8Linear(nn.Module):
    """A Linear with int8 weights (one scale per output channel) whose input
    is quantised per token (one scale per row) when it is called. The int8
    product is exact, so each row's output depends on that row alone: a
    batch neighbour, a padded row or a longer text changes nothing."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        step = rows.abs().amax(-1, keepdim=True).clamp_(min=1e-12) / 127
        q = torch.round(rows / step).to(torch.int8)
        y = torch._int_mm(q, self.weight.t()).float().mul_(step).mul_(self.scale)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class PackedInt8Linear(nn.Module):
    """Int8Linear's per-row quantisation on fbgemm's int8 product, which a
    decoder wants: for the 1 to 8 rows of a decode step it is 1.3-1.8x
    faster than `torch._int_mm` (whose one-row path is its only fast one),
    for a 512-token prompt 1.13-1.22x slower (TeenyTinyLlama-160m's
    matrices, 2 vCPUs with VNNI). Without VNNI `torch._int_mm` has no fast
    kernel at all (TeenyTinyLlama-160m on a 2-vCPU Zen 3: 105 ms a decode
    step and 33 s for a 512-token prompt, against 36 ms and 1.6 s here,
    scripts/decode_step.py), so there every int8 model uses this one.
    fbgemm codes a row in unsigned 8 bits around a zero point, so results
    are not Int8Linear's bit for bit; their error against fp32 is the same
    or smaller (tests/test_fastpath.py).

    fbgemm quantises its whole input with one scale and zero point, from
    its minimum and maximum. Dividing each row by its largest magnitude and
    adding a row that holds +1 and -1 pins those at [-1, 1] whatever the
    rows are: each row is quantised on its own, and its result depends on
    that row alone, bit for bit (tests/test_fastpath.py).

    With VNNI fbgemm adds its products in int32 and a row is quantised in
    8 bits, as per token. Without it (AVX2 alone) fbgemm adds pairs of
    products in int16, which full 8-bit activations overflow (a token's
    probability then moves by 0.5); 7 bits fit, but lose too much (0.03).
    So there each row goes in as two 7-bit halves, in one call: `hi`, on
    the grid fbgemm uses for [-1, 1] at 7 bits (steps of 1/63.5; its ends,
    +-64 steps, lie outside and would move the pins), and what `hi` left
    out, 126x larger (still inside [-1, 1]). The weights are read once, and
    the activations keep ~13 bits.
    Its weights live in fbgemm's packed layout (`packed_bytes`), which no
    tensor of the module shows."""

    GRID = 63.5   # fbgemm's 7-bit steps per unit on [-1, 1]: scale 2/127, zero point 64
    LOW = 126     # how much larger the second half goes in

    def __init__(self, linear: nn.Linear, halves: bool = False):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        self.in_features, self.out_features, self.halves = linear.in_features, linear.out_features, halves
        with warnings.catch_warnings():   # quantised tensors are deprecated; the op is not
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scale.double(), torch.zeros(len(scale), dtype=torch.long),
                                           0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, None)
        self.packed_bytes = w.numel() + 4 * len(scale)
        anchor = torch.zeros(1, self.in_features)
        anchor[0, :2] = torch.tensor([1.0, -1.0])
        self.register_buffer("anchor", anchor)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        peak = rows.abs().amax(-1, keepdim=True).clamp_(min=1e-12)
        rows = rows / peak
        if self.halves:
            hi = rows.mul(self.GRID).round_().clamp_(-63, 63).div_(self.GRID)
            both = torch.ops.quantized.linear_dynamic(
                torch.cat([hi, rows.sub_(hi).mul_(self.LOW), self.anchor]), self.packed, True)
            n = len(hi)
            y = both[n:2 * n].div_(self.LOW).add_(both[:n])
        else:
            y = torch.ops.quantized.linear_dynamic(torch.cat([rows, self.anchor]), self.packed, False)[:-1]
        y.mul_(peak)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def has_vnni() -> bool:
    """The CPU adds 8-bit products in int32 (AVX-512 VNNI or AVX-VNNI)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def packed_int8() -> str | None:
    """How fbgemm's int8 product serves here: 'full' (VNNI: rows in 8
    bits), 'halves' (AVX2 alone: rows as two 7-bit halves,
    PackedInt8Linear), or None (no fbgemm: Int8Linear)."""
    try:
        PackedInt8Linear(nn.Linear(8, 8))(torch.ones(2, 8))
    except (RuntimeError, NotImplementedError, AttributeError):
        return None
    return "full" if has_vnni() else "halves"


def int8_way(decodes: bool) -> str | None:
    """The product a model gets on the int8 road: a PackedInt8Linear way
    (as `packed_int8`), or None for Int8Linear. A decoder's steps are a few
    rows: fbgemm's product. A classifier reads whole texts at once:
    torch's where it is fast (VNNI), else fbgemm's too."""
    packed = packed_int8()
    return packed if decodes or packed == "halves" else None


def int8_product() -> str:
    """What the int8 road multiplies with here, for a decoder and for a
    classifier (the benchmark prints it)."""
    name = {"full": "fbgemm", "halves": "fbgemm in two 7-bit halves (no VNNI)", None: "torch._int_mm"}
    decoder, classifier = name[int8_way(True)], name[int8_way(False)]
    return decoder if decoder == classifier else f"{decoder} (decoders), {classifier} (classifiers)"


def quantize(model: nn.Module, keep: tuple[str, ...] = (), packed: str | None = None) -> None:
    """Every nn.Linear of `model` as an Int8Linear (a PackedInt8Linear where
    `packed` says how, as `packed_int8`), in place (each fp32 weight is let
    go as soon as its int8 copy exists), except the layers named in `keep`."""
    def int8(linear):
        return PackedInt8Linear(linear, halves=packed == "halves") if packed else Int8Linear(linear)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and name not in keep:
                setattr(parent, name, int8(child))


# A classifier's head (LlamaForSequenceClassification's `score`, BERT's
# `classifier`) stays fp32: it is a few thousand weights, and its output is
# the logits people read.
HEADS = ("score", "classifier")


class GateUp(nn.Module):
    """LlamaMLP with gate_proj and up_proj stacked in one Linear: one matrix
    product instead of two. It replaces the layer's MLP (same output)."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_up_proj = fused_linear([mlp.gate_proj, mlp.up_proj])
        self.down_proj, self.act_fn = mlp.down_proj, mlp.act_fn

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def linear_from_conv1d(conv: nn.Module) -> nn.Linear:
    """GPT-2's Conv1D (a Linear with its weight stored transposed) as a Linear,
    so that quantize_dynamic, which only knows nn.Linear, converts it too."""
    out = nn.Linear(*conv.weight.shape, dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(conv.weight.t())
        out.bias.copy_(conv.bias)
    return out


def fuse(model: nn.Module) -> None:
    """Fewer, larger matrix products for the decode step (decoder.py): on a
    small CPU each int8 product costs ~40 us of fixed overhead besides its
    weights, and a Llama decode step makes 7 per layer. The MLP's gate and up
    are stacked in place; q, k and v get a stacked copy (`qkv_proj`) that
    only the decoder uses, because transformers' attention calls them one by
    one (+19 % weight memory on the 160m shape). GPT-2 (Aira) already stacks
    q, k and v; its Conv1D layers become Linear layers so that int8 reaches
    them."""
    if model.config.model_type == "gpt2":
        for block in model.transformer.h:
            for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"),
                                 (block.mlp, "c_fc"), (block.mlp, "c_proj")):
                setattr(parent, name, linear_from_conv1d(getattr(parent, name)))
    if model.config.model_type != "llama":
        return
    for layer in model.model.layers:
        a = layer.self_attn
        a.qkv_proj = fused_linear([a.q_proj, a.k_proj, a.v_proj])
        layer.mlp = GateUp(layer.mlp)


def apply(model: nn.Module, device: torch.device, mode: str = "auto",
          decodes: bool = True) -> tuple[nn.Module, str]:
    """The model as the fast path serves it, and the road taken ('off',
    'int8', 'bf16'). Only CPU models change. A model that does not decode
    (a classifier, a scorer) keeps its layers' shapes and its head. int8
    took a full-size TeenyTinyLlama-160m classifier from 525 to 202 MB and
    made it 1.4-2.4x faster on 20-1,500 characters."""
    if device.type != "cpu":
        return model, "off"
    road = resolve(mode)
    # One decode thread per core: more oversubscribes a small machine.
    torch.set_num_threads(cores())
    if road != "off" and decodes:
        fuse(model)
    if road == "int8":
        if not has_int8():
            raise ValueError("TTL_FAST=int8: this torch build has no int8 matrix product.")
        # A classifier keeps its head in fp32.
        quantize(model, keep=() if decodes else HEADS, packed=int8_way(decodes))
    elif road == "bf16":
        model = model.to(torch.bfloat16)
    if road != "off":
        release_file_pages(model)
    return model, road


def release_file_pages(model: nn.Module) -> None:
    """Give back the memory of the weights the fast path replaced.
    transformers maps the safetensors file and its tensors point into it;
    converting the model reads every page of it, and those pages stay
    resident while any tensor (an embedding, a norm) still points into the
    file. Copying the few that are left lets the file be unmapped, and
    malloc_trim returns the freed fp32 copies to the system. Measured for
    TeenyTinyLlama-160m with int8 weights: the process went from 1061 to
    633 MB resident (248 MB before loading)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = t.data.clone()
    memory.give_back()


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every layer's weights except
    embedding tables (one row per token), counting each tensor once; int8
    packed weights at one byte each."""
    seen, total = set(), 0
    unread = set()   # q, k, v of an attention with a stacked copy: decode reads the copy
    for mod in model.modules():
        if hasattr(mod, "qkv_proj"):
            unread |= {id(mod.q_proj), id(mod.k_proj), id(mod.v_proj)}
    for mod in model.modules():
        if isinstance(mod, nn.Embedding) or id(mod) in unread:
            continue
        total += getattr(mod, "packed_bytes", 0)
        for p in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            if id(p) not in seen and p is not getattr(mod, "anchor", None):
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total


@torch.inference_mode()
def fidelity(reference: nn.Module, candidate: nn.Module, input_ids: torch.Tensor) -> dict:
    """How closely `candidate` follows `reference` on the same inputs (a
    batch of token ids, teacher-forced): the share of positions where the
    top-1 next token agrees, and the mean KL(reference || candidate)."""
    ref = torch.log_softmax(reference(input_ids=input_ids).logits.float(), -1)
    cand = torch.log_softmax(candidate(input_ids=input_ids).logits.float(), -1)
    agree = (ref.argmax(-1) == cand.argmax(-1)).float().mean()
    kl = (ref.exp() * (ref - cand)).sum(-1).mean()
    return {"top1_agreement": float(agree), "mean_kl": float(kl)}
