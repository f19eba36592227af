"""The CPU fast path: chosen from the CPU, overridable by one setting, and
faithful to fp32 on a stand-in whose distributions are not flat (trained
briefly on the project's own text). Speed is measured by inference.bench."""

from __future__ import annotations

import copy

import pytest
import torch

from inference import fastpath
from inference.generation import complete
from inference.sampling import Sampling
from inference.engine import Engine
from inference.settings import Settings


@pytest.fixture(scope="module")
def fp32(engine):
    """The same stand-in as the `ttl` fixture, loaded with the fast path off."""
    return Engine(Settings(standin=True, standin_dir=engine.settings.standin_dir,
                           fast="off")).load("ttl-160m")


def corpus_batch(tokenizer, rows=4, width=48) -> torch.Tensor:
    from inference.standins import _corpus_lines
    ids = tokenizer("\n".join(_corpus_lines()), add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[i * width:(i + 1) * width] for i in range(rows)])


def test_setting_rejects_unknown_road():
    with pytest.raises(ValueError, match="fast must be one of"):
        Settings(fast="int4")
    with pytest.raises(ValueError, match="TTL_FAST must be one of"):
        fastpath.resolve("turbo")


def test_auto_picks_a_road_this_cpu_has():
    road = fastpath.resolve("auto")
    assert road in ("int8", "bf16", "off")
    if fastpath.has_int8():
        assert road == "int8"


def test_engine_serves_the_chosen_road_and_says_so(ttl, fp32):
    road = fastpath.resolve("auto")
    if road == "off":
        pytest.skip("this torch build has no int8 matrix product and this CPU no native bf16: "
                    "there is no fast road to check")
    assert f"{road} fast path" in ttl.source
    assert "fast path" not in fp32.source
    if road == "int8":   # the Linear layers now hold int8 weights
        assert fastpath.weight_bytes_per_token(ttl.model) < 0.5 * fastpath.weight_bytes_per_token(fp32.model)


@pytest.mark.parametrize("road", ["int8", "bf16"])
def test_fast_roads_agree_with_fp32(fp32, road):
    if road == "int8" and not fastpath.has_int8():
        pytest.skip("this torch build has no int8 matrix product (torch._int_mm): no int8 road")
    fast, taken = fastpath.apply(copy.deepcopy(fp32.model), fp32.device, road)
    assert taken == road
    f = fastpath.fidelity(fp32.model, fast, corpus_batch(fp32.tokenizer))
    assert f["top1_agreement"] >= 0.9, f
    assert f["mean_kl"] <= 0.05, f


def packed_ways() -> list[str]:
    """PackedInt8Linear's ways that are exact on this CPU: 'halves' wherever
    fbgemm is, 'full' only with VNNI (int32 sums)."""
    way = fastpath.packed_int8()
    return {None: [], "halves": ["halves"], "full": ["full", "halves"]}[way]


@pytest.mark.parametrize("way", ["full", "halves"])
def test_the_decoders_int8_product_quantises_each_row_alone_as_the_per_token_one_does(way):
    """PackedInt8Linear (fbgemm) on rows of very different loudness: each
    row's result is bit for bit what it gets alone, and as close to fp32 as
    Int8Linear's per-token product; in two 7-bit halves (CPUs without
    VNNI), closer."""
    if way not in packed_ways():
        pytest.skip(f"fbgemm's product in {way!r} is not exact on this CPU (no fbgemm, or no VNNI)")
    torch.manual_seed(0)
    linear = torch.nn.Linear(768, 2304)
    packed = fastpath.PackedInt8Linear(linear, halves=way == "halves")
    per_token = fastpath.Int8Linear(linear)
    x = torch.randn(5, 768) * torch.tensor([[1.0], [40.0], [0.01], [300.0], [1e-6]])
    together = packed(x)
    assert torch.equal(together, torch.cat([packed(row[None]) for row in x]))
    with torch.no_grad():
        exact = linear(x)
    error = lambda y: ((y - exact).norm(dim=-1) / exact.norm(dim=-1)).max()
    assert error(together) <= (0.75 if way == "halves" else 1.05) * error(per_token(x))
    assert error(together) < 0.02
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    fastpath.quantize(model, packed=way)
    assert type(model[0]) is fastpath.PackedInt8Linear and model[0].halves == (way == "halves")
    assert fastpath.weight_bytes_per_token(model) == 8 * 8 + 4 * 8 + 4 * 8   # int8, scales, bias


def test_without_vnni_every_int8_model_takes_fbgemms_product_in_halves(monkeypatch):
    """torch._int_mm has no fast kernel without VNNI (24 s for a 512-token
    prompt of TeenyTinyLlama-160m on a 2-vCPU Zen 3): there classifiers and
    decoders alike get fbgemm's product, in two 7-bit halves, which fbgemm's
    int16 sums cannot overflow."""
    if fastpath.packed_int8() is None:
        pytest.skip("this torch build has no fbgemm")
    monkeypatch.setattr(fastpath, "has_vnni", lambda: False)
    for decodes in (True, False):
        model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
        model.config = type("Config", (), {"model_type": "test"})()
        fastpath.apply(model, torch.device("cpu"), "int8", decodes=decodes)
        assert all(type(m) is fastpath.PackedInt8Linear and m.halves for m in model)
    monkeypatch.setattr(fastpath, "has_vnni", lambda: True)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16))
    model.config = type("Config", (), {"model_type": "test"})()
    fastpath.apply(model, torch.device("cpu"), "int8", decodes=False)
    assert type(model[0]) is fastpath.Int8Linear   # whole texts: torch._int_mm, fast with VNNI


def test_stacked_products_compute_what_the_separate_ones_do(fp32):
    """fastpath.fuse stacks gate/up (in place) and q/k/v (a copy the decoder
    reads): in fp32 the logits must not move, whichever forward reads them."""
    from inference import decoder
    fused = copy.deepcopy(fp32.model)
    fastpath.fuse(fused)
    x = corpus_batch(fp32.tokenizer)
    cache = decoder.new_cache(fp32)
    cache.reserve(1, x.shape[1])
    where = decoder.Where(slice(0, 1), torch.arange(x.shape[1])[None], x.shape[1], None)
    with torch.inference_mode():
        expected = fp32.model(x).logits
        torch.testing.assert_close(fused(x).logits, expected, atol=1e-4, rtol=1e-4)
        step = decoder.FORWARDS["llama"](fused, x[:1], where, cache)
    assert all(hasattr(layer.self_attn, "qkv_proj") for layer in fused.model.layers)
    torch.testing.assert_close(step[0], expected[0, -1], atol=1e-4, rtol=1e-4)


def test_fast_path_generates_the_same_greedy_text(ttl, fp32):
    ids = ttl.tokenizer("A TeenyTinyLlama é um modelo")["input_ids"]
    s = Sampling(do_sample=False, max_new_tokens=12, repetition_penalty=1.0)
    assert complete(ttl, ids, s).strip()
    # Greedy text may part ways after a near-tie; the first words must match.
    assert complete(ttl, ids, s).split()[:3] == complete(fp32, ids, s).split()[:3]


def test_bench_table_reports_ratio_against_the_cache_on_pipeline():
    from inference import bench
    runs = [{"decode_tps": 60.0, "cards": {"decode_tps": 4.0}}, {"decode_tps": 80.0, "cards": {"decode_tps": 6.0}},
            {"decode_tps": 70.0, "cards": {"decode_tps": 5.0}}]
    base = bench.combine(runs)
    assert base == {"decode_tps": 70.0, "cards": {"decode_tps": 5.0}}
    out = bench.table({"ttl-160m": {"pipeline": {"decode_tps": 20.0, "cards": {"decode_tps": 5.0}},
                                    "engine:int8": {"decode_tps": 80.0},
                                    bench.LLAMA_CPP: {"decode_tps": 160.0}}})
    row = next(l for l in out.splitlines() if "decode, 1 stream" in l)
    assert "| 80 (local, int8) | 20 | 5.00 | 160 | 4.00x | 0.50x |" in row
    # Without llama.cpp (not installed) its column says so with a dash.
    out = bench.table({"ttl-160m": {"pipeline": {"decode_tps": 20.0}, "engine:int8": {"decode_tps": 80.0}}})
    assert "| 80 (local, int8) | 20 | – | – | 4.00x | – |" in out


def test_aira_conv1d_layers_become_linear_with_the_same_logits(engine):
    """GPT-2's Conv1D layers are rewritten as Linear so that int8 reaches them."""
    from transformers.pytorch_utils import Conv1D
    aira = Engine(Settings(standin=True, standin_dir=engine.settings.standin_dir,
                           fast="off")).load("aira-2-124m")
    rewritten = copy.deepcopy(aira.model)
    fastpath.fuse(rewritten)
    assert not any(isinstance(mod, Conv1D) for mod in rewritten.modules())
    x = torch.tensor([[50257, 100, 200, 300, 50259]])
    with torch.inference_mode():
        torch.testing.assert_close(rewritten(x).logits, aira.model(x).logits, atol=1e-4, rtol=1e-4)
