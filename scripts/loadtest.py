"""Load test and soak: simultaneous users against the app on stand-ins.

    python scripts/loadtest.py                        # starts `app.py --standin` on a free loopback port
    python scripts/loadtest.py --seconds 600 --max-growth-mb 50   # the soak
    python scripts/loadtest.py --url http://127.0.0.1:7860/ --pid 1234

Each user loops until the time is up over every endpoint: text generation,
perplexity, chat, classification, batches (some cancelled), the OpenAI
API, generations cancelled mid-stream, and bad inputs (which must be
refused with a message, never fail otherwise). Warm-up first (each endpoint
once, then all users for --warmup seconds, not counted); then the server's
resident memory is read, the measured run goes, and memory is read again,
also every 30 s. Exits non-zero on any unexpected error or on memory growth
above --max-growth-mb (`growth`: what memory under load does from the
first third of the run to the last). Loopback only; every loop and wait is
bounded.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
SERVER_LOG = Path(tempfile.gettempdir()) / "ttl-loadtest-server.log"
REQUEST_TIMEOUT = 180   # seconds; a request slower than this counts as an error

# What the users send: endpoint -> list of argument lists (the UI's inputs).
GEN = lambda text: [text, "ttl-160m", "main", 0.2, 20, 0.2, 1.2, 32, False, None]  # noqa: E731
CHAT = lambda text: [text, [], 0.2, 30, 0.3, 1.2, 32, None, 1]  # noqa: E731  (/chat: message, history, sampling, seed, n)
WORK = {
    "/generate": [GEN("A PUCRS é uma universidade "), GEN("Em meio a um escândalo, a frente")],
    "/chat": [CHAT("Você pode me explicar o que é Aprendizagem de Máquina?"),
              CHAT("Como eu posso fazer a minha namorada feliz?")],
    "/classify": [["Esqueceram de mim 2 é um dos melhores filmes de natal.", "ttl-160m-imdb", ""],
                  ["Que comentário gentil, obrigado!", "ttl-160m-hatebr", ""],
                  ["I love rainy days", "tinyllama-tweet", ""]],
    "/perplexity": [["A lhama é um animal da América do Sul.", "ttl-160m", "main"]],
    "/classify_batch": [[None, "\n".join(f"Um filme número {i}: bom? ruim?" for i in range(32)),
                         "ttl-160m-imdb"]],
}
CANCEL = [GEN("A muitos anos atrás, em uma galáxia muito distante")[:7] + [400, False, None]]
LONG_BATCH = [None, "\n".join(f"Um filme número {i}, " + "muito longo " * 40 for i in range(400)),
              "tinyllama-tweet"]
# Refused inputs: (endpoint, arguments, a word the refusal must contain).
BAD = [("/classify", ["", "ttl-160m-imdb", ""], "text"),
       ("/classify", ["Bom", "no-such-model", ""], "model"),
       ("/generate", ["A lhama", "ttl-160m", "main", 99, 20, 0.2, 1.2, 32, False, None],
        "maximum"),
       ("/chat", ["Oi", "not a history"], "history"),
       ("/classify_batch", [None, "x" * 1_000_001, "ttl-160m-imdb"], "limit")]
OPENAI = {"model": "ttl-160m", "prompt": "A PUCRS é", "max_tokens": 32, "temperature": 0.5}
MIX = ["/generate", "/generate", "/chat", "/chat", "/classify", "/classify", "/classify",
       "/perplexity", "/classify_batch", "openai", "openai", "cancel", "cancel batch", "bad"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(SERVER_LOG, "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--standin"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {SERVER_LOG}")
        try:
            with urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer within 180 s")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = defaultdict(list)
        self.errors: list[str] = []
        self.cancelled = 0

    def add(self, endpoint: str, seconds: float):
        with self.lock:
            self.latency[endpoint].append(seconds)

    def error(self, what: str):
        with self.lock:
            self.errors.append(what)


def one_request(client, endpoint: str, rng: random.Random, stats: Stats, url: str) -> None:
    if endpoint == "openai":   # the OpenAI-compatible route, as a plain HTTP client sends it
        import httpx
        t0 = time.perf_counter()
        try:
            r = httpx.post(url + "v1/completions", json=OPENAI, timeout=REQUEST_TIMEOUT)
            r.raise_for_status()
            assert r.json()["choices"][0]["text"] is not None
        except Exception as exc:
            stats.error(f"openai: {type(exc).__name__}: {str(exc)[:200]}")
            return
        stats.add("openai", time.perf_counter() - t0)
        return
    if endpoint == "bad":   # refused with a message that names the problem
        name, args, word = rng.choice(BAD)
        t0 = time.perf_counter()
        try:
            client.predict(*args, api_name=name)
            stats.error(f"bad {name}: accepted {str(args)[:80]}")
        except Exception as exc:
            text = str(exc)
            if word not in text.lower() or "Traceback" in text:
                stats.error(f"bad {name}: refused without saying why: {text[:200]}")
                return
        stats.add("bad", time.perf_counter() - t0)
        return
    if endpoint == "cancel batch":
        t0 = time.perf_counter()
        job = client.submit(*LONG_BATCH, api_name="/classify_batch")
        time.sleep(rng.uniform(0.5, 2.0))
        job.cancel()
        if not wait_for(job.done, 30):
            stats.error("cancel batch: the job did not end within 30 s of cancelling")
            return
        stats.add("cancel batch", time.perf_counter() - t0)
        return
    if endpoint == "cancel":
        t0 = time.perf_counter()
        job = client.submit(*rng.choice(CANCEL), api_name="/generate")
        wait_for(lambda: len(job.outputs()) >= 1 or job.done(), 60)
        time.sleep(rng.uniform(0, 0.5))   # cancel at a random point of the stream
        job.cancel()
        if not wait_for(job.done, 30):
            stats.error("cancel: the job did not end within 30 s of cancelling")
            return
        stats.add("cancel", time.perf_counter() - t0)
        with stats.lock:
            stats.cancelled += 1
        return
    t0 = time.perf_counter()
    job = client.submit(*rng.choice(WORK[endpoint]), api_name=endpoint)
    try:
        result = job.result(timeout=REQUEST_TIMEOUT)
    except Exception as exc:   # any failure is reported, none is fatal
        job.cancel()
        stats.error(f"{endpoint}: {type(exc).__name__}: {str(exc)[:200]}")
        return
    if not result or (endpoint == "/generate" and not result[0]):
        stats.error(f"{endpoint}: empty result {result!r}"[:200])
        return
    stats.add(endpoint, time.perf_counter() - t0)


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def run_users(url: str, users: int, seconds: float, stats: Stats, pid: int | None = None,
              samples: list | None = None) -> None:
    from gradio_client import Client
    deadline = time.monotonic() + seconds

    def user(n: int):
        rng = random.Random(n)
        try:
            client = Client(url, verbose=False)
        except Exception as exc:
            stats.error(f"user {n} could not connect: {exc}")
            return
        while time.monotonic() < deadline:
            one_request(client, rng.choice(MIX), rng, stats, url)
        client.close()

    def sample():   # the server's memory every 30 s
        while time.monotonic() < deadline:
            samples.append(round(rss_mb(pid)))
            time.sleep(min(30, max(0.0, deadline - time.monotonic())))

    pool = [threading.Thread(target=user, args=(n,), name=f"user-{n}") for n in range(users)]
    if pid and samples is not None:
        threading.Thread(target=sample, daemon=True).start()
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=seconds + REQUEST_TIMEOUT + 60)
        if t.is_alive():
            stats.error(f"{t.name} still running after its deadline")


def drift(samples: list[float]) -> float:
    """Memory growth under load: the last third's median minus the first's."""
    third = max(1, len(samples) // 3)
    return statistics.median(samples[-third:]) - statistics.median(samples[:third])


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


ABOUT = """`scripts/loadtest.py` starts `python app.py --standin` on a free loopback
port (or takes `--url` and `--pid` of a running one) and runs simultaneous
users for a bounded time. Each user loops over text generation (32 new
tokens), perplexity, chat (32 new tokens), classification (IMDB, HateBR and
the tweet-sentiment adapter), batches of 32 rows, the OpenAI-compatible
`/v1/completions`, generations of 400 tokens cancelled at a random point of
the stream, batches of 400 long rows cancelled after 0.5-2 s, and bad inputs
(an empty text, an unknown model, a temperature of 99, a malformed history,
over-long pasted lines), which must be refused with a message that names
the problem. Every endpoint is called once and all users run a warm-up
before the server's resident memory is read; the measured run follows, with
memory read every 30 s, then memory is read again once the server is idle.
Memory under load swings by a hundred MB with what is in flight, so growth
is the median of the last third of the samples minus the median of the
first third. The script exits non-zero on any unexpected error or on
growth above `--max-growth-mb`.
"""


def report(args, command: str, stats: Stats, memory: dict, seconds: float) -> str:
    rows = ["| endpoint | requests | p50 s | p95 s | p99 s | max s |", "|---|---:|---:|---:|---:|---:|"]
    for endpoint in ("/generate", "/perplexity", "/chat", "/classify", "/classify_batch", "openai",
                     "cancel", "cancel batch", "bad"):
        v = sorted(stats.latency.get(endpoint, []))
        if v:
            rows.append(f"| {endpoint} | {len(v)} | {percentile(v, 50):.2f} | {percentile(v, 95):.2f} "
                        f"| {percentile(v, 99):.2f} | {v[-1]:.2f} |")
    total = sum(map(len, stats.latency.values()))
    growth = drift(memory["samples"])
    lines = [
        "# Load test", "", ABOUT,
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with:", "",
        "```bash", command, "```", "", "## Result", "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, Python "
        f"{platform.python_version()}; server on stand-ins (`app.py --standin`), loopback only.",
        f"- {args.users} simultaneous users for {seconds:.0f} s after a {args.warmup:.0f} s warm-up; "
        f"{total} requests completed ({total / seconds:.1f}/s), "
        f"{stats.cancelled} of them generations cancelled mid-stream (latency: submit to ended).",
        f"- **Errors: {len(stats.errors)}**",
        f"- Server memory (RSS): {memory['start']:.0f} MB at start, {memory['before']:.0f} MB after "
        f"warm-up, {memory['after']:.0f} MB idle after the run; **growth under load "
        f"{growth:+.0f} MB** "
        f"(bound {args.max_growth_mb} MB). Server threads: {memory['threads_before']} before, "
        f"{memory['threads_after']} after.",
        f"- Memory every 30 s of the run (MB): {', '.join(map(str, memory['samples']))}.",
        "",
        *rows,
    ]
    if stats.errors:
        lines += ["", "Errors (first 20):", *[f"- {e}" for e in stats.errors[:20]]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an app already running (loopback); default: start one")
    p.add_argument("--pid", type=int, help="the server's process id, for memory (with --url)")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warmup", type=float, default=20)
    p.add_argument("--max-growth-mb", type=float, default=64)
    p.add_argument("--report", type=Path, help="also write the markdown report here")
    args = p.parse_args(argv)
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        p.error("--url must be a loopback address")
    command = "python scripts/loadtest.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if os.environ.get("TTL_STANDIN_DIR"):   # which stand-ins the server used
        command = f"TTL_STANDIN_DIR={os.environ['TTL_STANDIN_DIR']} {command}"
    proc = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        proc, url = start_server()
        pid = proc.pid
    try:
        from gradio_client import Client
        memory = {"start": rss_mb(pid) if pid else float("nan")}
        warm = Client(url, verbose=False)   # every endpoint once: loads every model used
        for endpoint, calls in WORK.items():
            for call in calls:
                warm.predict(*call, api_name=endpoint)
        warm.close()
        run_users(url, args.users, args.warmup, Stats())   # warm-up: not counted
        memory["before"] = rss_mb(pid) if pid else float("nan")
        memory["threads_before"] = threads(pid) if pid else -1
        stats = Stats()
        t0 = time.monotonic()
        memory["samples"] = []
        run_users(url, args.users, args.seconds, stats, pid, memory["samples"])
        elapsed = time.monotonic() - t0
        time.sleep(10)   # let cancelled work end and the server go idle
        memory["after"] = rss_mb(pid) if pid else float("nan")
        memory["threads_after"] = threads(pid) if pid else -1
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = report(args, command, stats, memory, elapsed)
    print(text)
    if args.report:
        args.report.write_text(text)
    return 1 if stats.errors or drift(memory["samples"]) > args.max_growth_mb else 0


if __name__ == "__main__":
    sys.exit(main())
