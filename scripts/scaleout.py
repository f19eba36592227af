"""Scale-out measurement: API clients through the app to one and to two
vLLM servers, then one of two killed and restarted while the clients go on.

    TTL_VLLM_PYTHON=.venv-vllm/bin/python python scripts/scaleout.py [--clients 16] [--seconds 60]

Starts vLLM on the ttl-160m stand-in (the servers of tests/vllm_servers.py),
`app.py --standin` with TTL_BACKEND naming them, and `--clients` official
`openai` clients, each sending /v1/completions (64 new tokens, greedy) in a
loop. Prints a markdown table: completions/s, tokens/s, p50/p95 latency and
errors per phase, and what the clients saw while a replica was down.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from vllm_servers import Server  # noqa: E402

from loadtest import free_port, wait_for  # noqa: E402  (scripts/loadtest.py)

NEW_TOKENS = 64
PROMPTS = ["A PUCRS é uma universidade", "Em meio a um escândalo, a frente", "A lhama é",
           "O Brasil é um país"]


def start_app(urls: list[str], standins: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               TTL_STANDIN_DIR=str(standins), TTL_BACKEND="ttl-160m=vllm:" + "|".join(urls))
    log = open(Path("/tmp") / f"ttl-scaleout-app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--standin"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

    def ready() -> bool:
        try:
            return bool(client.models.list().data)
        except openai.OpenAIError:
            return False
    if not wait_for(ready, 180):
        proc.kill()
        raise SystemExit("the app did not start")
    return proc, url


def load(url: str, clients: int, seconds: float, during=None) -> dict:
    """`clients` threads sending completions for `seconds`; `during(t0)`
    runs alongside (a replica killed and restarted)."""
    latencies, errors, tokens, lock = [], [], [0], threading.Lock()
    stop = time.monotonic() + seconds

    def user(k: int) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                               timeout=120)
        i = k
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                r = client.completions.create(model="ttl-160m", prompt=PROMPTS[i % len(PROMPTS)],
                                              max_tokens=NEW_TOKENS, temperature=0)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    tokens[0] += r.usage.completion_tokens
            except openai.OpenAIError as exc:
                with lock:
                    errors.append((time.monotonic(), f"{type(exc).__name__}: {str(exc)[:120]}"))
            i += 1

    threads = [threading.Thread(target=user, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    events = during(t0) if during else []
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
    return dict(done=len(latencies), per_s=len(latencies) / elapsed, tok_s=tokens[0] / elapsed,
                p50=statistics.median(latencies) if latencies else float("nan"), p95=q[18],
                errors=[(round(t - t0, 1), e) for t, e in errors], events=events)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--standins", type=Path, default=Path(os.environ.get(
        "TTL_STANDIN_DIR", Path.home() / ".cache/ttl-playground/test-standins")))
    args = p.parse_args()
    python = os.environ.get("TTL_VLLM_PYTHON") or sys.exit("set TTL_VLLM_PYTHON (vllm_check.sh)")
    from inference import standins
    standins.ensure("ttl-160m", root=args.standins)
    servers = [Server("ttl-160m", args.standins / "ttl-160m", free_port()) for _ in range(2)]
    rows = []
    try:
        for s in servers:
            s.start(python)
        for s in servers:
            s.wait()
        for n in (1, 2):
            app, url = start_app([s.url for s in servers[:n]], args.standins)
            try:
                load(url, args.clients, 10)   # warm-up, not counted
                rows.append((f"{n} server{'s' * (n > 1)}", load(url, args.clients, args.seconds)))
                if n == 2:
                    def kill_and_restart(t0):
                        time.sleep(args.seconds / 4)
                        servers[1].stop()
                        events = [(round(time.monotonic() - t0, 1), "server 2 killed")]
                        servers[1].start(python)
                        servers[1].wait()
                        events.append((round(time.monotonic() - t0, 1), "server 2 healthy again"))
                        return events
                    rows.append(("2 servers, one killed and restarted",
                                 load(url, args.clients, args.seconds * 3, kill_and_restart)))
            finally:
                app.terminate()
                app.wait(timeout=30)
    finally:
        for s in servers:
            s.stop()
    print(f"\n{args.clients} clients, /v1/completions through the app, {NEW_TOKENS} new tokens "
          f"greedy, ttl-160m stand-in (fp32, eager) on vLLM CPU\n")
    print("| servers | completions | completions/s | tokens/s | p50 s | p95 s | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows:
        print(f"| {name} | {r['done']} | {r['per_s']:.2f} | {r['tok_s']:.0f} | {r['p50']:.2f} "
              f"| {r['p95']:.2f} | {len(r['errors'])} |")
    for name, r in rows:
        for t, what in r["events"]:
            print(f"- {name}: at {t} s, {what}")
        for t, what in r["errors"][:10]:
            print(f"- {name}: error at {t} s: {what}")


if __name__ == "__main__":
    main()
