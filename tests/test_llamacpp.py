"""The llama.cpp side of the benchmark (inference/llamacpp.py): our GGUF of
a Llama stand-in computes what transformers computes, and its Q8_0 is the
one llama.cpp's own quantiser makes. llama.cpp is an optional extra
(`pip install llama-cpp-python gguf`): without it these tests are skipped,
and the benchmark prints no llama.cpp column."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from inference import llamacpp

from conftest import STANDIN_DIR

pytestmark = pytest.mark.skipif(
    not llamacpp.available(), reason="llama.cpp is an optional extra: pip install llama-cpp-python gguf")

PROMPT = [1, 50, 60, 70, 80, 90, 100, 200, 300, 17]


def reference_logits(key: str, ids: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(STANDIN_DIR / key, dtype=torch.float32)
    if (STANDIN_DIR / key / "adapter").exists():
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(STANDIN_DIR / key / "adapter"))
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


@pytest.mark.parametrize("key", ["ttl-160m", "tinyllama-tweet"])
def test_f32_gguf_gives_the_next_token_logits_of_transformers(key, tmp_path):
    """TinyLlama has 2 key/value heads for 4 query heads and its LoRA
    adapter merged in: the rotary permutation and the merge both show."""
    adapter = STANDIN_DIR / key / "adapter" if key == "tinyllama-tweet" else None
    path = llamacpp.convert(STANDIN_DIR / key, "f32", adapter, out=tmp_path / "m.gguf")
    llm = llamacpp.open_model(path, context=64, threads=1)
    got, want = llamacpp.logits(llm, PROMPT), reference_logits(key, PROMPT)
    # llama.cpp keeps its key/value cache in fp16: close, not equal.
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert got.argmax() == want.argmax()
    # Token by token (the cache, the positions) gives what the whole prompt gives.
    first = llamacpp.greedy(llm, PROMPT, 3)
    assert first[0] == int(want.argmax()) and len(first) == 3


def test_q8_0_gguf_is_the_one_llama_cpps_quantiser_makes(tmp_path):
    import gguf
    import llama_cpp
    f32 = llamacpp.convert(STANDIN_DIR / "ttl-160m", "f32", out=tmp_path / "f32.gguf")
    ours = llamacpp.convert(STANDIN_DIR / "ttl-160m", "q8_0", out=tmp_path / "q8_0.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    theirs = tmp_path / "theirs.gguf"
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type, name
        assert np.array_equal(np.asarray(a[name].data), np.asarray(b[name].data)), name
    # Every matrix is 8-bit, the norms stay f32.
    assert a["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert a["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    llm = llamacpp.open_model(ours, context=64, threads=1)
    assert llamacpp.logits(llm, PROMPT).argmax() in np.argsort(reference_logits("ttl-160m", PROMPT))[-5:]


def test_gguf_is_kept_beside_the_model_and_written_once(tmp_path):
    import shutil
    model_dir = tmp_path / "ttl-160m"
    shutil.copytree(STANDIN_DIR / "ttl-160m", model_dir)
    path = llamacpp.convert(model_dir)
    assert path == model_dir / "model-q8_0.gguf"
    written = path.stat().st_mtime_ns
    assert llamacpp.convert(model_dir) == path and path.stat().st_mtime_ns == written
    assert llamacpp.weight_bytes_per_token(path) < path.stat().st_size


def test_only_llama_models_are_converted(tmp_path):
    with pytest.raises(ValueError, match="Llama models"):
        llamacpp.convert(STANDIN_DIR / "aira-2-124m", out=tmp_path / "a.gguf")
