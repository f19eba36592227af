"""How long a fine-tuning run takes, and how /classify answers meanwhile.

    python -m inference.standins /tmp/full --full-size --only ttl-160m ttl-160m-imdb
    TTL_STANDIN_DIR=/tmp/full python scripts/finetune_load.py [--rows 500] [--length 128]

Trains ttl-160m (its full-size stand-in: the real shape, random weights)
with LoRA r 8 for one epoch on `--rows` texts of about `--length` tokens,
while one client classifies a text with ttl-160m-imdb after another, as
`/classify` does (api.classify, the engine the app serves with). Prints the
run's seconds and the classify latencies (median, p95) with the machine
idle and during the run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference import api, finetune  # noqa: E402
from inference.engine import Engine  # noqa: E402
from inference.settings import Settings  # noqa: E402

WORDS = ["bom", "ótimo", "ruim", "péssimo", "filme", "livro", "história", "personagem",
         "roteiro", "final", "começo", "atuação", "música", "cena", "diretor"]


def table(rows: int, tokens: int) -> finetune.Table:
    rng = random.Random(0)
    lines = ["text\tlabel"]
    for i in range(rows):   # ~1.3 tokens a word with the stand-in's tokenizer
        lines.append(" ".join(rng.choice(WORDS) for _ in range(tokens)) + f"\t{'ab'[i % 2]}")
    return finetune.read_table("\n".join(lines).encode(), "load.tsv")


def latencies(engine: Engine, until: threading.Event, out: list[float]) -> None:
    text = "Um filme bom, com uma história que prende do começo ao fim."
    while not until.is_set():
        t0 = time.perf_counter()
        api.classify(engine, "ttl-160m-imdb", {"text": text})
        out.append(time.perf_counter() - t0)
        time.sleep(0.2)   # a visitor every 0.2 s


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    return f"median {statistics.median(xs) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms ({len(xs)} requests)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=500)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    engine = Engine(Settings.from_env(standin=True, full_size_standins=True,
                                      data_dir=tempfile.mkdtemp(prefix="ttl-load-")))
    data = table(args.rows, int(args.length / 1.3))
    api.classify(engine, "ttl-160m-imdb", {"text": "Carregar."})   # loaded before timing
    idle: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=latencies, args=(engine, stop, idle))
    t.start()
    time.sleep(20)
    stop.set()
    t.join()
    busy: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=latencies, args=(engine, stop, busy))
    t0 = time.perf_counter()
    trained_at = None
    for event in api.finetune_run(engine, data, "load", epochs=args.epochs,
                                  learning_rate=2e-4, max_length=args.length):
        if trained_at is None and getattr(event, "step", 0) >= 1:
            trained_at = time.perf_counter()
            t.start()   # from the first step: loading the base is not training
        if isinstance(event, finetune.Done):
            break
    stop.set()
    t.join()
    done = event
    print(f"fine-tuning: {args.rows} rows, {args.length} tokens, LoRA r {finetune.LORA_R}, "
          f"{args.epochs} epoch(s), {done.meta['steps']} steps: {done.meta['seconds']:.0f} s in "
          f"all ({time.perf_counter() - t0:.0f} s here)")
    print("classify, idle:          " + summary(idle))
    print("classify, while training: " + summary(busy))
    print(f"load average: {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
