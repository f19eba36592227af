"""A ZeroGPU Space: the engine computes on the caller's thread (inside its
`spaces.GPU` call) and the handlers are wrapped by `spaces.GPU` when the
package is there; nothing changes where it is not."""

import importlib.machinery
import sys
import types

from inference import formats, generation
from inference.sampling import Sampling
from ui import common

from conftest import engine_for_tests


def test_zero_gpu_engine_decodes_and_classifies_on_the_callers_thread():
    e = engine_for_tests(zero_gpu=True)
    ttl = e.load("ttl-160m")
    ids = formats.encode("plain", ttl.tokenizer, {"text": "A lhama"})
    text = generation.complete(ttl, ids, Sampling(max_new_tokens=6, seed=1))
    from inference.classification import classify
    probs = classify(e.load("ttl-160m-imdb"), [{"text": "Que filme bom!"}])[0]
    assert text and abs(sum(probs.values()) - 1) < 1e-5
    assert not e.worker.running, "no compute thread: the caller's own thread did the work"


def test_handlers_run_under_spaces_gpu_only_on_zero_gpu(monkeypatch, engine):
    wrapped = []
    spaces = types.ModuleType("spaces")
    spaces.__spec__ = importlib.machinery.ModuleSpec("spaces", None)
    spaces.GPU = lambda duration: lambda fn: wrapped.append(fn) or fn
    monkeypatch.setitem(sys.modules, "spaces", spaces)

    def handler(engine, text):
        return text

    assert common.bind(handler, engine)("oi") == "oi" and not wrapped   # not a ZeroGPU engine
    zero = engine_for_tests(zero_gpu=True)
    assert common.bind(handler, zero)("oi") == "oi" and len(wrapped) == 1
    monkeypatch.delitem(sys.modules, "spaces")
    monkeypatch.setattr(sys, "path", [])   # and without the package, nothing is wrapped
    assert common.bind(handler, zero)("oi") == "oi" and len(wrapped) == 1


def test_zero_gpu_stop_takes_the_request_out_of_its_batch_at_once():
    from inference import decoder
    e = engine_for_tests(zero_gpu=True)
    ttl = e.load("ttl-160m")
    ids = formats.encode("plain", ttl.tokenizer, {"text": "A lhama"})
    tokens = generation.stream_tokens(ttl, ids, Sampling(max_new_tokens=500, seed=1))
    next(tokens)
    tokens.close()   # inline: the closing caller runs the turn that drops it
    assert not decoder.decoder_for(ttl).rows


# A stand-in for the `spaces` package, strict where ZeroGPU is: it must be
# imported before torch (it patches torch's CUDA setup on import), and it
# records every `spaces.GPU(duration=...)` the app asks for.
FAKE_SPACES = '''
import sys
if "torch" in sys.modules:
    raise RuntimeError("spaces imported after torch: ZeroGPU could not set up CUDA")
WRAPPED = []

def GPU(fn=None, duration=60):
    def wrap(f):
        WRAPPED.append((f.__name__, duration))
        return f
    return wrap(fn) if fn is not None else wrap
'''

PROBE = '''
import app
import spaces
from inference.engine import Engine
from inference.settings import Settings
app.build(Engine(Settings.from_env()))
d = dict(spaces.WRAPPED)
print(d["generate"](None, "Olá", max_new_tokens=150, completions=4),
      d["generate"](None, "Olá", max_new_tokens=10),
      d["respond"](None, "Oi", max_new_tokens=2000, n=4),
      d["classify_batch"](None, None, "a\\nb", "ttl-160m-imdb"),
      d["classify"](None, "bom"))
'''


def test_on_zero_gpu_spaces_comes_before_torch_and_each_call_asks_for_its_time(tmp_path):
    import os
    import subprocess
    from pathlib import Path
    (tmp_path / "spaces.py").write_text(FAKE_SPACES)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{root}", "SPACES_ZERO_GPU": "true",
           "TTL_STANDIN": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    four_long, short, capped, batch, one = map(int, out.stdout.split()[-5:])
    assert (four_long, short, capped, batch, one) == (
        common.GPU_BASE_S + 30, common.GPU_BASE_S, common.GPU_MAX_S, 120, common.GPU_BASE_S)
