"""Run real Agent Server processes for the tests and benches: the embedded shape (`agentserver
dev`) or the scaled shape (API servers + queue workers over Postgres and Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
TEST_GRAPHS = ROOT / "tests" / "graphs" / "langgraph.json"


class ServerProcess:
    """One `agentserver <command>` child process."""

    def __init__(
        self,
        command: str = "dev",
        *,
        config: Path = TEST_GRAPHS,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        port: int | None = None,
        health: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self.command = command
        self.config = config
        self.port = port or free_port()
        self.data_dir = data_dir
        self.env = {**os.environ, "LOG_LEVEL": "WARNING", "LOG_COLOR": "false", **(env or {})}
        self.health = health
        self.proc: subprocess.Popen | None = None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"agentserver-{command}-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        args = [sys.executable, "-m", "agentserver", self.command, "--config", str(self.config)]
        if self.command == "dev":
            if self.data_dir is None:
                self.data_dir = Path(tempfile.mkdtemp(prefix="agentserver-data-"))
            args += ["--data-dir", str(self.data_dir)]
        if self.command in ("dev", "serve"):
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        elif self.health:
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=str(ROOT), env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentserver {self.command} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.url + "/ok", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"agentserver {self.command} did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-5000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
