"""The memory budget: the engine lets the least recently used models go
before a load would pass it, never one in use, keeps a model's last two
checkpoints while they fit, and refuses a model that could never fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference import api, memory
from inference.errors import ModelUnavailable
from inference.registry import REGISTRY
from inference.settings import Settings

from conftest import engine_for_tests

ROOT = Path(__file__).resolve().parent.parent


def test_every_model_is_served_under_a_budget_that_holds_two_or_three():
    e = engine_for_tests(memory_budget_mb=100)
    biggest = max(memory.load_bytes(k, False) for k in REGISTRY)
    assert 2 * biggest < e.budget < 4 * biggest   # so models must be let go
    for key in REGISTRY:
        m = e.load(key)
        assert m.resident > 0
        # What is kept fits the budget with room for the next load's peak.
        assert e.resident() + m.resident <= e.budget + biggest
        assert e.loaded()[-1] is m   # the latest stays
    assert len(e.loaded()) < len(REGISTRY)


def test_the_least_recently_used_goes_first_and_a_model_in_use_stays():
    e = engine_for_tests(memory_budget_mb=85)
    with e.hold("ttl-460m") as held:   # the oldest, but in use
        first = e.load("ttl-160m-imdb")
        e.load("ttl-160m-hatebr")
        e.load("ttl-160m-imdb")   # used again: now hatebr is the least recent idle one
        for key in ("aira-2-124m", "ttl-160m", "tinyllama-tweet"):
            e.load(key)
        kept = {m.spec.key for m in e.loaded()}
        assert "ttl-460m" in kept and e.load("ttl-460m") is held
        assert "ttl-160m-hatebr" not in kept and "ttl-160m-imdb" in kept
    assert held.users == 0
    assert first.users == 0


def test_two_checkpoints_of_a_model_stay_and_a_third_replaces_the_older():
    e = engine_for_tests()
    main = e.load("ttl-160m", "main")
    e.load("ttl-160m", "step100000")
    assert e.load("ttl-160m", "main") is main   # switching back is instant
    e.load("ttl-160m", "step200000")
    kept = {m.revision for m in e.loaded() if m.spec.key == "ttl-160m"}
    assert kept == {"main", "step200000"}   # step100000 was the least recently used


def test_a_model_that_could_never_fit_is_refused_with_the_budget_named():
    e = engine_for_tests(memory_budget_mb=30)
    with pytest.raises(ModelUnavailable, match="memory budget is 30 MB.*TTL_MEMORY_BUDGET"):
        e.load("ttl-460m")
    assert e.load("ttl-160m-imdb").resident > 0   # a small one still loads


def test_requests_hold_their_model_while_they_stream():
    e = engine_for_tests(memory_budget_mb=60)
    stream = api.generate(e, "ttl-160m", "Olá", max_new_tokens=30, do_sample=False)
    started = next(stream)
    m = e.load("ttl-160m")
    assert started.key == "ttl-160m" and m.users == 1
    for key in ("ttl-460m", "aira-2-124m", "tinyllama-tweet", "ttl-460m-imdb"):
        e.load(key)
    assert any(x is m for x in e.loaded())   # in use: never let go
    list(stream)
    assert m.users == 0


def test_the_budget_setting_is_checked_at_start():
    assert Settings.from_env({"TTL_MEMORY_BUDGET": "3000"}).memory_budget_mb == 3000
    for bad in ("3GB", "0", "-5"):
        with pytest.raises(ValueError, match="TTL_MEMORY_BUDGET is in MB"):
            Settings.from_env({"TTL_MEMORY_BUDGET": bad})
    assert 0 < memory.default_budget() < memory.machine_bytes()


# Full-size stand-ins (the real shapes, random weights) loaded one after the
# other in a fresh process under a 1.2 GB budget: the process's peak resident
# memory (VmHWM) passes what it held before the first load by at most the
# budget and one model's load.
FULL_SIZE = ("ttl-160m-imdb", "ttl-160m-hatebr", "reward-pt", "toxiguard-pt", "aira-2-124m")
PROBE = """
import json, sys
from inference import api
from inference.engine import Engine
from inference.settings import Settings

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

e = Engine(Settings.from_env())
before = status("VmRSS")
for key in sys.argv[1:]:
    if e.load(key).spec.task == "classify":
        api.classify(e, key, {"text": "Um filme muito bom."})
print(json.dumps({"before": before, "peak": status("VmHWM"), "kept": e.resident(),
                  "budget": e.budget, "loaded": [m.spec.key for m in e.loaded()]}))
"""


def test_full_size_models_in_turn_keep_the_process_within_the_budget(tmp_path):
    env = {**os.environ, "TTL_STANDIN": "1", "TTL_FULL_SIZE_STANDINS": "1",
           "TTL_STANDIN_DIR": str(tmp_path), "TTL_MEMORY_BUDGET": "1200"}
    # Built beforehand, in another process: building is not loading.
    subprocess.run([sys.executable, "-m", "inference.standins", str(tmp_path), "--full-size",
                    "--only", *FULL_SIZE], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=600)
    out = subprocess.run([sys.executable, "-c", PROBE, *FULL_SIZE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    one_model = max(memory.load_bytes(k, True) for k in FULL_SIZE)
    assert r["kept"] <= r["budget"]
    assert r["peak"] - r["before"] <= r["budget"] + one_model
    assert r["loaded"][-1] == "aira-2-124m" and len(r["loaded"]) < len(FULL_SIZE)
