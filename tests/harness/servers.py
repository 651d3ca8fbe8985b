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

from tests.harness.backends import free_port

ROOT = Path(__file__).resolve().parents[2]
TEST_GRAPHS = ROOT / "tests" / "graphs" / "langgraph.json"


def agentserver_args(command: str, config: Path, *, port: int | None, data_dir: Path | None = None) -> list[str]:
    """The command line of one `agentserver <command>` process on loopback (a worker listens only
    for its health check, when given a port)."""
    args = [sys.executable, "-m", "agentserver", command, "--config", str(config)]
    if command == "dev" and data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if port is not None:
        args += ["--host", "127.0.0.1", "--port", str(port)]
    return args


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
        if self.command == "dev" and self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="agentserver-data-"))
        listens = self.command in ("dev", "serve") or self.health
        args = agentserver_args(
            self.command, self.config, port=self.port if listens else None, data_dir=self.data_dir
        )
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


class RoundRobinProxy:
    """A TCP proxy on loopback that hands each new connection to the next backend in turn, so
    one SDK client spreads its requests (and a stream and its join) over several API servers."""

    def __init__(self, ports: list[int]) -> None:
        import asyncio
        import threading

        self.backends = ports
        self.port = free_port()
        self._n = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    writer.close()
                except Exception:  # noqa: BLE001
                    pass

        async def handle(reader, writer):
            port = self.backends[self._n % len(self.backends)]
            self._n += 1
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def serve():
            server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            self._ready.set()
            async with server:
                await server.serve_forever()

        self._loop.run_until_complete(serve())

    def start(self) -> "RoundRobinProxy":
        self._thread.start()
        self._ready.wait(10)
        return self


class ScaledCluster:
    """The scaled shape: API servers and queue workers as separate processes over one Postgres
    and one Redis, behind a round-robin proxy."""

    def __init__(self, postgres_uri: str, redis_uri: str, *, n_api: int = 2, n_workers: int = 2,
                 env: dict[str, str] | None = None, config: Path = TEST_GRAPHS) -> None:
        self.env = {
            "POSTGRES_URI_CUSTOM": postgres_uri,
            "REDIS_URI_CUSTOM": redis_uri,
            "QUEUE_ENABLED": "true",
            "LANGGRAPH_POSTGRES_POOL_MAX_SIZE": "20",
            **(env or {}),
        }
        self.config = config
        self.apis = [ServerProcess("serve", env=self.env, config=config) for _ in range(n_api)]
        self.workers = [ServerProcess("worker", env=self.env, config=config) for _ in range(n_workers)]
        self.proxy: RoundRobinProxy | None = None

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def start(self) -> "ScaledCluster":
        # the first process migrates; the others find the schema in place (advisory lock)
        self.apis[0].start()
        for p in self.apis[1:] + self.workers:
            p.start()
        self.proxy = RoundRobinProxy([p.port for p in self.apis]).start()
        return self

    def add_worker(self, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess("worker", env={**self.env, **(env or {})}, config=self.config).start()
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.apis + self.workers:
            p.stop(timeout=15)
