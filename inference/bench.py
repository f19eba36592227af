"""The benchmark: the app's engine against the model cards' `pipeline`, in
one run, on full-size stand-ins (real shapes, random weights: speed does not
depend on the values).

    python -m inference.bench --quick        # TeenyTinyLlama-160m + the IMDB classifier, < 5 min on 2 cores
    python -m inference.bench                # every served shape, every CPU road
    python -m inference.bench --models ttl-160m --roads int8 bf16 off

Each side (the engine on one fast-path road, or the pipeline) runs in a
fresh process, so that load time and peak memory are its own. Figures:
load time; first request (cold); time to first token for 32- and 512-token
prompts; decode tokens/s for one stream (greedy, a fixed number of new
tokens); aggregate tokens/s for 4 simultaneous streams, with their prompts
and without (as one stream's decode rate), and the ratio of the latter to
one stream's; bytes of weights read per token and the share of the
measured memory bandwidth that decode reaches; for a classifier, texts/s
one at a time and batched. The baseline of every ratio is the pipeline in
fp32 with the KV cache on; "cards" is the pipeline as the model cards run
it (their `use_cache: false` inherited). Times are medians over repeats:
on a shared machine they move from run to run, and the table says how
loaded the machine was.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import itertools
import json
import multiprocessing
import os
import platform
import resource
import statistics
import threading
import time
from pathlib import Path

import torch

from . import fastpath, llamacpp, standins
from .registry import CLASSIFY, DEFAULT_KEYS, REGISTRY

GENERATIVE = ("ttl-160m", "ttl-460m", "aira-2-124m", "tinyllama-tweet")
LLAMA_SHAPES = ["ttl-160m", "ttl-460m", "tinyllama-tweet"]   # what llama.cpp is measured on
CLASSIFIER = "ttl-160m-imdb"

# name, unit, True when higher is better
FIGURES = {
    "load_s": ("load", "s", False),
    "first_request_s": ("first request (cold, 32-token prompt)", "s", False),
    "ttft_32_s": ("time to first token, 32-token prompt", "s", False),
    "ttft_512_s": ("time to first token, 512-token prompt", "s", False),
    "ttft_turn_s": ("time to first token, 512-token prompt after one of its first 480 (a chat's next turn)",
                    "s", False),
    "decode_tps": ("decode, 1 stream", "tok/s", True),
    "stream4_tps": ("decode, 4 simultaneous streams (aggregate)", "tok/s", True),
    "stream4_decode_tps": ("decode, 4 simultaneous streams (aggregate, their prompts' time left out as for 1 stream)",
                           "tok/s", True),
    "stream4_scaling": ("decode, 4 streams against 1 (the two figures above)", "x", True),
    "weight_mb_per_token": ("weights read per token", "MB", False),
    "bandwidth_share": ("share of the bandwidth limit", "%", True),
    "single_texts_s": ("classification, one text per request", "texts/s", True),
    "batched_texts_s": ("classification, batch of 16", "texts/s", True),
    "mixed_texts_s": ("classification, 64 texts of mixed length in chunks of 16", "texts/s", True),
    "peak_rss_mb": ("peak memory (process)", "MB", False),
}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_bandwidth_gbs(repeats: int = 7) -> float:
    """Memory read bandwidth as torch sees it: summing a 512 MB tensor, far
    larger than any cache."""
    x = torch.ones(128 * 2**20)
    x.sum()
    return x.numel() * 4 / median_time(x.sum, repeats) / 1e9


def corpus_ids(tokenizer) -> list[int]:
    return tokenizer("\n".join(standins._corpus_lines()), add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, n: int) -> list[int]:
    ids = corpus_ids(tokenizer)
    return (ids * (n // len(ids) + 1))[:n]


def cold_prompts(tokenizer):
    """`cold(n)`: an n-token prompt of the corpus that starts where no
    earlier one did, so that an engine keeping what earlier prompts left
    (decoder.Prefixes) computes it whole, as a new visitor's. A side asks
    for ~50; 7 tokens apart, they start at ~350 places of a ~650-token corpus."""
    ids, starts = corpus_ids(tokenizer), itertools.count(0, 7)

    def cold(n: int) -> list[int]:
        start = next(starts)
        return [ids[(start + i) % len(ids)] for i in range(n)]
    return cold


def corpus_texts(n: int) -> list[str]:
    lines = standins._corpus_lines()
    return [lines[i % len(lines)] for i in range(n)]


def mixed_texts(n: int) -> list[str]:
    """Texts of 1 to 16 corpus lines (~16 to ~250 tokens), as a CSV of
    reviews and short comments mixes them; the same on every side."""
    lines = standins._corpus_lines()
    return [" ".join(lines[(i + j) % len(lines)] for j in range(1 + (i * 7) % 16)) for i in range(n)]


# -- one side, in its own process -------------------------------------------
def engine_for(side: str, key: str, path: str):
    """The engine of an engine side: 'engine:ROAD' is the local backend on
    that fast-path road; 'engine:llamacpp' the llamacpp backend (its GGUF
    written by `write_gguf` beforehand, into the benchmark's data folder)."""
    from .engine import Engine
    from .settings import Settings
    road = side.split(":")[1]
    adapters = {key: str(Path(path) / "adapter")} if REGISTRY[key].adapter_setting else {}
    backend = "llamacpp" if road == "llamacpp" else "local"
    return Engine(Settings(device="cpu", strict=True, local_dirs={key: path}, adapters=adapters,
                           backend=backend, fast="auto" if road == "llamacpp" else road,
                           data_dir=str(Path(path).parent / "bench-data")))


def write_gguf(key: str, path: str) -> str:
    """Load once on the llamacpp backend, so that its GGUF is written
    before any side is timed."""
    m = engine_for(ENGINE_LLAMA_CPP, key, path).load(key)
    if "llama.cpp" not in m.source:
        raise RuntimeError(f"the llamacpp backend did not take {key}: {m.banner}")
    return m.source


def _generative_side(side: str, key: str, path: str, cfg: dict) -> dict:
    n, repeats = cfg["new_tokens"], cfg["repeats"]
    t0 = time.perf_counter()
    if side == "pipeline":
        from transformers import pipeline
        pipe = pipeline("text-generation", model=path, dtype=torch.float32, device="cpu")
        model, tok = pipe.model, pipe.tokenizer
        cards_cache = bool(model.generation_config.use_cache)

        def gen(ids, new, cache=True):
            # The pipeline takes text: the prompt goes in as the text of `ids`.
            extra = {"use_cache": True} if cache else {}
            out = pipe(tok.decode(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       return_full_text=False, **extra)
            assert out[0]["generated_text"] is not None
    elif side.startswith("llama.cpp"):
        from transformers import AutoTokenizer
        gguf = llamacpp.gguf_path(path, side.split(":")[1])   # converted by main() beforehand
        llm = llamacpp.open_model(gguf, context=1024, threads=fastpath.cores())
        model, tok = None, AutoTokenizer.from_pretrained(path)

        def gen(ids, new, cache=True):
            llamacpp.greedy(llm, ids, new)
    else:
        from .decoder import decoder_for
        from .sampling import Sampling
        m = engine_for(side, key, path).load(key)
        model, tok = m.model, m.tokenizer

        def gen(ids, new, cache=True):
            # The app's path: the model's batched decoder, as stream() uses
            # it, greedy, with no end token so that it makes exactly `new`.
            s = Sampling(do_sample=False, max_new_tokens=new, repetition_penalty=1.0)
            request = decoder_for(m).submit(ids, s, stop=frozenset())
            while (token := m.worker.take(request.out)) is not None:
                if isinstance(token, BaseException):
                    raise token
    out = {"load_s": time.perf_counter() - t0}
    cold = cold_prompts(tok)

    def cold_time(length: int, new: int, repeats: int, **kw) -> float:
        prompts = iter([cold(length) for _ in range(repeats)])   # made before the clock starts
        return median_time(lambda: gen(next(prompts), new, **kw), repeats)
    out["first_request_s"] = cold_time(32, 1, 1)
    gen(cold(32), 4)   # warm-up
    out["ttft_32_s"] = cold_time(32, 1, repeats)
    out["ttft_512_s"] = cold_time(512, 1, repeats)
    t_n = cold_time(32, n, repeats)
    out["decode_tps"] = (n - 1) / max(t_n - out["ttft_32_s"], 1e-9)

    def turn() -> float:
        prompt = cold(512)
        gen(prompt[:480], 1)   # the last turn, answered
        t = time.perf_counter()
        gen(prompt, 1)
        return time.perf_counter() - t
    out["ttft_turn_s"] = statistics.median(turn() for _ in range(repeats))

    if model is None:   # llama.cpp: four sequences in one context, one decode call a step
        streams = llamacpp.Compute(gguf, rows=4, context=1024, threads=fastpath.cores())

        def four(new):
            llamacpp.greedy_streams(streams, [cold(32) for _ in range(4)], new)
    else:
        def four(new):
            threads = [threading.Thread(target=gen, args=(cold(32), new)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    t4_n = median_time(lambda: four(n), max(1, repeats // 2))
    out["stream4_tps"] = 4 * n / t4_n
    # As one stream's decode rate: the time the four prompts take (four
    # requests of one token each) is not decoding.
    out["stream4_decode_tps"] = 4 * (n - 1) / max(t4_n - median_time(lambda: four(1), repeats), 1e-9)
    if model is None:
        out["weight_mb_per_token"] = llamacpp.weight_bytes_per_token(gguf) / 1e6
        return out
    out["weight_mb_per_token"] = (llamacpp.weight_bytes_per_token(m.decoder.compute.path)
                                  if side == ENGINE_LLAMA_CPP else fastpath.weight_bytes_per_token(model)) / 1e6
    if side == "pipeline" and not cards_cache:
        ttft = cold_time(32, 1, repeats, cache=False)
        t_n = cold_time(32, n, max(1, repeats // 2), cache=False)
        out["cards"] = {"ttft_32_s": ttft, "decode_tps": (n - 1) / max(t_n - ttft, 1e-9)}
    return out


def _classifier_side(side: str, key: str, path: str, cfg: dict) -> dict:
    texts, mixed_rows = corpus_texts(16), mixed_texts(64)
    t0 = time.perf_counter()
    if side == "pipeline":
        from transformers import pipeline
        pipe = pipeline("text-classification", model=path, dtype=torch.float32, device="cpu")
        kw = dict(truncation=True, max_length=256)
        single = lambda: [pipe(t, **kw) for t in texts]
        batched = lambda: pipe(texts, batch_size=len(texts), **kw)
        mixed = lambda: pipe(mixed_rows, batch_size=16, **kw)
    else:
        from .classification import classify, classify_rows
        from .engine import Engine
        from .settings import Settings
        m = Engine(Settings(device="cpu", strict=True, local_dirs={key: path},
                            fast=side.split(":")[1])).load(key)
        single = lambda: [classify(m, [{"text": t}]) for t in texts]
        batched = lambda: classify(m, [{"text": t} for t in texts])
        mixed = lambda: classify_rows(m, [{"text": t} for t in mixed_rows])   # the tab's batch mode
    out = {"load_s": time.perf_counter() - t0}
    single()   # warm-up
    out["single_texts_s"] = len(texts) / median_time(single, cfg["repeats"])
    out["batched_texts_s"] = len(texts) / median_time(batched, cfg["repeats"])
    out["mixed_texts_s"] = len(mixed_rows) / median_time(mixed, cfg["repeats"])
    return out


def run_side(side: str, key: str, path: str, cfg: dict) -> dict:
    torch.set_num_threads(fastpath.cores())
    fn = _classifier_side if REGISTRY[key].task == CLASSIFY else _generative_side
    out = fn(side, key, path, cfg)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20   # MiB, as ru_maxrss


def all_defaults_memory(paths: dict[str, str]) -> dict:
    """In one engine process: the resident memory after each default model
    is loaded and has served one request, and the peak."""
    from .classification import classify, score_pairs
    from .decoder import decoder_for
    from .sampling import Sampling
    from .engine import Engine
    from .settings import Settings
    from .registry import SCORE
    torch.set_num_threads(fastpath.cores())
    engine = Engine(Settings(device="cpu", strict=True, local_dirs=paths))
    out = {"start_mb": rss_mb()}
    for key in paths:
        m = engine.load(key)
        if m.spec.is_generative:
            request = decoder_for(m).submit(prompt_ids(m.tokenizer, 32), Sampling(max_new_tokens=8))
            while m.worker.take(request.out) is not None:
                pass
        elif m.spec.task == SCORE:
            score_pairs(m, [("Oi?", "Olá!")])
        else:
            classify(m, [{f: "Um texto." for f in m.spec.inputs}])
        out[key] = rss_mb()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def combine(runs: list[dict]) -> dict:
    """The median of each figure over rounds."""
    out = {}
    for k, v in runs[0].items():
        vals = [r[k] for r in runs if k in r]
        out[k] = combine(vals) if isinstance(v, dict) else statistics.median(vals)
    return out


def in_fresh_process(*args, fn=run_side) -> dict:
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# -- fidelity, on the tiny stand-in trained on our text ---------------------
def fidelity_report(roads: list[str]) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = standins.ensure("ttl-160m", full_size=False)   # trained briefly, cached
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor(prompt_ids(tok, 8 * 64)).view(8, 64)
    out = {}
    for road in roads:
        cand, taken = fastpath.apply(copy.deepcopy(ref), torch.device("cpu"), road)
        out[taken] = fastpath.fidelity(ref, cand, ids)
    return out


# -- the run ----------------------------------------------------------------
def machine() -> dict:
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                  if l.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": fastpath.cores(), "torch": torch.__version__,
            "load_avg_at_start": os.getloadavg(), "bf16": fastpath.has_native_bf16(),
            "int8": fastpath.has_int8(), "int8_product": fastpath.int8_product(),
            # What the app's default (auto) decodes the Llama models with here.
            "auto_backend": "llamacpp" if llamacpp.preferred() else "local",
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def fmt(v, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "%":
        return f"{100 * v:.0f}%"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}"


LLAMA_CPP = "llama.cpp:q8_0"   # the side llama.cpp runs as: Q8_0, what a CPU user picks
ENGINE_LLAMA_CPP = "engine:llamacpp"   # the engine on its llamacpp backend


def table(results: dict) -> str:
    rows = ["| model | figure | engine (backend, road) | pipeline fp32, cache on | cards (cache off) "
            "| llama.cpp Q8_0 | engine/baseline | engine/llama.cpp |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, sides in results.items():
        base, lcpp = sides.get("pipeline", {}), sides.get(LLAMA_CPP, {})
        engines = [s for s in sides if s.startswith("engine")]
        for fig, (name, unit, higher) in FIGURES.items():
            for side in engines:
                e, b, l = sides[side].get(fig), base.get(fig), lcpp.get(fig)
                if e is None and b is None and l is None:
                    continue
                c = base.get("cards", {}).get(fig)
                ratio = lambda d: f"{e / d:.2f}x" if e is not None and d else "–"
                better = "" if higher else " (lower is better)"
                road = side.split(":")[1] if side == ENGINE_LLAMA_CPP else f"local, {side.split(':')[1]}"
                rows.append(f"| {key} | {name} [{unit}]{better} | {fmt(e, unit)} ({road}) "
                            f"| {fmt(b, unit)} | {fmt(c, unit)} | {fmt(l, unit)} | {ratio(b)} | {ratio(l)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="TeenyTinyLlama-160m and the IMDB classifier, fewer repeats")
    p.add_argument("--models", nargs="*", choices=list(REGISTRY), help="registry keys (default: every served shape)")
    p.add_argument("--roads", nargs="*", choices=fastpath.MODES, help="engine roads to measure (default: auto; full run: all)")
    p.add_argument("--repeats", type=int, help="repeats per figure (median is reported)")
    p.add_argument("--rounds", type=int, help="fresh processes per side, alternating (median is reported)")
    p.add_argument("--new-tokens", type=int, help="new tokens per decode run")
    p.add_argument("--dir", type=Path, help="where full-size stand-ins are built (default: the app's cache)")
    p.add_argument("--json", type=Path, default=Path("bench.json"), help="where to write the figures")
    p.add_argument("--vs-llama-cpp", action="store_true",
                   help="the engine against llama.cpp Q8_0 only, on the Llama shapes (no pipeline, no classifier)")
    a = p.parse_args(argv)
    if a.vs_llama_cpp and not llamacpp.available():
        p.error("--vs-llama-cpp needs llama.cpp: pip install -r requirements-llamacpp.txt")
    models = a.models or (LLAMA_SHAPES if a.vs_llama_cpp else ["ttl-160m", CLASSIFIER] if a.quick
                          else [*GENERATIVE, CLASSIFIER])
    roads = a.roads or (["auto"] if a.quick or a.vs_llama_cpp else ["int8", "bf16", "off"])
    cfg = {"repeats": a.repeats or 3, "rounds": a.rounds or (2 if a.quick or a.vs_llama_cpp else 3),
           "new_tokens": a.new_tokens or 128}   # as in the measurements
    info = machine()
    bandwidth = read_bandwidth_gbs()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, int8 products: "
          f"{info['int8_product']}, the app's default backend: {info['auto_backend']}, load average "
          f"{info['load_avg_at_start'][0]:.1f}; read bandwidth {bandwidth:.1f} GB/s; "
          f"medians over {cfg['rounds']} processes x {cfg['repeats']} repeats, {cfg['new_tokens']} new tokens, greedy", flush=True)
    if not llamacpp.available():
        print("# no llama.cpp column: pip install -r requirements-llamacpp.txt (README, Performance)", flush=True)
    results = {}
    for key in models:
        path = str(standins.ensure(key, full_size=True, root=a.dir))
        # The fast path changes generative models only: a classifier has one engine side.
        sides = ([] if a.vs_llama_cpp else ["pipeline"]) + (
            [f"engine:{r}" for r in roads] if REGISTRY[key].task != CLASSIFY else ["engine:auto"])
        if key in LLAMA_SHAPES and llamacpp.available():
            adapter = Path(path) / "adapter" if REGISTRY[key].adapter_setting else None
            print(f"  {key}: GGUF {llamacpp.convert(path, 'q8_0', adapter)}", flush=True)
            print(f"  {key}: {in_fresh_process(key, path, fn=write_gguf)}", flush=True)
            sides += [ENGINE_LLAMA_CPP, LLAMA_CPP]
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        # Sides alternate, round after round, so that a burst of load from
        # other users of a shared machine does not fall on one side only.
        for round_ in range(cfg["rounds"]):
            for side in sides:
                print(f"  {key}: {side}, round {round_ + 1}/{cfg['rounds']}…", flush=True)
                runs[side].append(in_fresh_process(side, key, path, cfg))
        results[key] = {}
        for side in sides:
            r = combine(runs[side])
            if "decode_tps" in r:
                r["bandwidth_share"] = r["decode_tps"] * r["weight_mb_per_token"] * 1e6 / (bandwidth * 1e9)
            if "stream4_decode_tps" in r:
                r["stream4_scaling"] = r["stream4_decode_tps"] / r["decode_tps"]
            if side.startswith("engine") and REGISTRY[key].task != CLASSIFY:
                road = side.split(":")[1]
                r["road"] = road if side == ENGINE_LLAMA_CPP else fastpath.resolve(road)
            results[key][side] = r
    if a.vs_llama_cpp:
        print()
        print(table(results))
        a.json.write_text(json.dumps({"machine": info, "bandwidth_gbs": bandwidth, "config": cfg,
                                      "results": results}, indent=2))
        print(f"\nLoad average at the end {os.getloadavg()[0]:.1f} on {info['cores']} cores. JSON: {a.json}")
        return
    fid = fidelity_report([fastpath.resolve(r) for r in roads if fastpath.resolve(r) != "off"])
    print("  every default model in one process…", flush=True)
    memory = in_fresh_process({k: str(standins.ensure(k, full_size=True, root=a.dir))
                               for k in DEFAULT_KEYS}, fn=all_defaults_memory)
    out = {"machine": info, "bandwidth_gbs": bandwidth, "config": cfg, "results": results,
           "fidelity_vs_fp32": fid, "all_defaults_memory_mb": memory}
    a.json.write_text(json.dumps(out, indent=2))
    print()
    print(table(results))
    print()
    for road, f in fid.items():
        print(f"fidelity of {road} against fp32 (tiny stand-in trained on our text, 8x64 tokens): "
              f"top-1 agreement {100 * f['top1_agreement']:.1f}%, mean KL {f['mean_kl']:.4f}")
    print("\nresident memory with every default model loaded, one engine process (full-size "
          "stand-ins, each after one request): "
          + ", ".join(f"after {k} {memory[k]:.0f} MB" for k in DEFAULT_KEYS)
          + f"; peak {memory['peak_rss_mb']:.0f} MB")
    load = os.getloadavg()[0]
    print(f"\nLoad average at the end {load:.1f} on {info['cores']} cores"
          + (" (the machine was shared: figures are medians and vary run to run)." if load > 0.5 * info["cores"] else ".")
          + f" JSON: {a.json}")


if __name__ == "__main__":
    main()
