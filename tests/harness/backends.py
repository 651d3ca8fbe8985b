"""Start real Postgres and Redis servers on loopback, on free ports, for the tests and benches.

Postgres comes from Debian's `postgresql` package (initdb/postgres under
/usr/lib/postgresql/<v>/bin), Redis from `redis-server`. `.ci/run` installs them when missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package")
    return candidates[-1]


def _demote() -> dict:
    """initdb/postgres refuse to run as root: run them as the `postgres` user if we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid}


class _LocalServer:
    """A server process of the tests with a scratch directory."""

    dir: Path

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresServer(_LocalServer):
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agentserver-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> "PostgresServer":
        ids = _demote()
        if ids:
            os.chown(self.dir, ids["user"], ids["group"])
        data = self.dir / "data"
        if not data.exists():
            subprocess.run(
                [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                **ids,
            )
        self.proc = subprocess.Popen(
            [
                pg_bin("postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                "-k", str(self.dir), "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=500",
                "-c", "shared_buffers=256MB",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "postgres.log", "ab"),
            **ids,
        )
        _wait_port(self.port, self.proc, "postgres")
        # accept connections only after recovery: poll pg_isready
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run(
                [pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
            )
            if r.returncode == 0:
                break
            time.sleep(0.05)
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.proc and self.proc.poll() is None:
            sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "smart": signal.SIGTERM}[mode]
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


    def create_database(self, name: str) -> str:
        subprocess.run(
            [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
             "-c", f'CREATE DATABASE "{name}"'],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


class RedisServer(_LocalServer):
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agentserver-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.uri = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            raise RuntimeError("redis-server not found: install Debian's redis-server package")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

