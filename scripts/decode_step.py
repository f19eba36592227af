"""A decode step of a full-size stand-in on each int8 product this CPU has,
against fp32, in one process (the roads interleaved, medians): what
docs/performance.md's per-product tables come from.

    python scripts/decode_step.py                 # TeenyTinyLlama-160m's shape
    python scripts/decode_step.py --model ttl-460m --rounds 5

Products: `torch._int_mm` per token (Int8Linear), fbgemm in 8 bits (only
where VNNI makes it exact) and fbgemm in two 7-bit halves
(PackedInt8Linear), fp32 (`TTL_FAST=off`). Steps of 1, 4 and 8 rows over a
160-token cache, then one 512-token prompt per road (`--no-prompt` skips
it: `torch._int_mm` takes ~24 s for it on a CPU without VNNI).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inference import decoder, fastpath, standins  # noqa: E402

ROWS = (1, 4, 8)


def roads(model) -> dict:
    """name -> the model with that product (fused as the engine serves it)."""
    ways = {"int8 torch._int_mm": None, "int8 fbgemm halves": "halves", "fp32": "off"}
    if fastpath.packed_int8() == "full":
        ways["int8 fbgemm 8-bit"] = "full"
    out = {}
    for name, way in ways.items():
        m = copy.deepcopy(model)
        fastpath.fuse(m)
        if way != "off":
            fastpath.quantize(m, packed=way)
        out[name] = m
    return out


def forward(model, rows: int, past: int, new: int):
    """One forward of `rows` x `new` tokens after `past` cached ones."""
    c = model.config
    kv_heads, head_dim = decoder.kv_geometry(c)
    cache = decoder.Cache(c.num_hidden_layers, kv_heads, head_dim, past + new + 1,
                          torch.float32, torch.device("cpu"))
    cache.reserve(rows, past + new)
    ids = torch.randint(0, c.vocab_size, (rows, new))
    positions = (past + torch.arange(new))[None].expand(rows, new)
    mask = None if past == 0 else (torch.arange(past + new)[None] <= positions[:, -1:])[:, None, None]
    where = decoder.Where(slice(0, rows), positions, past + new, mask)
    return lambda: decoder.llama(model, ids, where, cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ttl-160m", help="a Llama registry key")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="steps timed per round")
    p.add_argument("--no-prompt", action="store_true", help="skip the 512-token prompt")
    a = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(fastpath.cores())
    from transformers import AutoModelForCausalLM
    path = standins.ensure(a.model, full_size=True)
    models = roads(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
    print(f"# {a.model}, {fastpath.cores()} threads, VNNI: {fastpath.has_vnni()}, "
          f"int8 road here: {fastpath.int8_product()}")
    times: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for _ in range(a.rounds):
            for name, m in models.items():
                for rows in ROWS:
                    step = forward(m, rows, 160, 1)
                    step()
                    t0 = time.perf_counter()
                    for _ in range(a.steps):
                        step()
                    times.setdefault((name, rows), []).append((time.perf_counter() - t0) / a.steps)
        base = {rows: statistics.median(times[("fp32", rows)]) for rows in ROWS}
        print("| product | " + " | ".join(f"{r} row{'s' * (r > 1)} [ms]" for r in ROWS)
              + (" | 512-token prompt [s] |" if not a.no_prompt else " |"))
        print("| --- " * (len(ROWS) + 1 + (not a.no_prompt)) + "|")
        for name, m in models.items():
            cells = [f"{1e3 * statistics.median(times[(name, r)]):.1f} "
                     f"({base[r] / statistics.median(times[(name, r)]):.2f}x fp32)" for r in ROWS]
            if not a.no_prompt:
                forward(m, 1, 0, 64)()   # warm-up: the first long forward allocates
                prompt = forward(m, 1, 0, 512)
                t0 = time.perf_counter()
                prompt()
                cells.append(f"{time.perf_counter() - t0:.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
