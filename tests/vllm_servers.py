"""vLLM servers on stand-ins, for the `vllm` tests and the scale-out
measurement: started from vLLM's own virtual environment (TTL_VLLM_PYTHON,
made by scripts/vllm_check.sh), on loopback ports, with the flags
docs/scale-out.md gives."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

START_TIMEOUT_S = 600   # two cores, four servers starting at once


@dataclass
class Server:
    name: str          # the served model name: the registry key
    model_dir: Path
    port: int
    pooling: bool = False
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return Path(tempfile.gettempdir()) / f"ttl-vllm-{self.name}-{self.port}.log"

    def start(self, python: str) -> "Server":
        command = [python, "-m", "vllm.entrypoints.openai.api_server",
                   "--host", "127.0.0.1", "--port", str(self.port),
                   "--model", str(self.model_dir), "--served-model-name", self.name,
                   "--dtype", "float32", "--enforce-eager",
                   "--logprobs-mode", "processed_logprobs"]
        command += ["--runner", "pooling"] if self.pooling else []
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.process = subprocess.Popen(command, env=env, stdout=self.log.open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def healthy(self) -> bool:
        try:
            with urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except (URLError, OSError):
            return False

    def wait(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM for {self.name} exited; its log: {self.log}\n"
                                   + self.log.read_text()[-3000:])
            time.sleep(1)
        raise TimeoutError(f"vLLM for {self.name} did not start in {timeout:.0f} s; "
                           f"its log: {self.log}")

    def stop(self) -> None:
        """Kill the whole process group (the API server, its engine core and
        worker), as a crashed machine would go."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
