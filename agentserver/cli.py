"""The `agentserver` command: dev | serve | worker | migrate."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
from pathlib import Path

import structlog

from agentserver import __version__

log = structlog.get_logger("agentserver")

LOCK_FILENAME = "agentserver.lock"
_held_locks: list[int] = []  # fds of data-directory locks, held until the process exits

DESCRIPTION = """\
Agent Server: serve the LangGraph graphs listed in a langgraph.json over HTTP,
wire-compatible with the official LangGraph SDK.

  agentserver dev       one process, no external services, state on local disk
  agentserver serve     an API server of the scaled shape (Postgres + Redis)
  agentserver worker    a queue worker of the scaled shape (Postgres + Redis)
  agentserver migrate   apply the Postgres schema migrations and exit

Settings come from environment variables (see docs/configuration.md)."""


def _add_common(p: argparse.ArgumentParser, *, http: bool = True) -> None:
    p.add_argument(
        "--config",
        "-c",
        default="langgraph.json",
        help="path to langgraph.json (default: ./langgraph.json)",
    )
    if http:
        p.add_argument("--host", default=None, help="interface to bind")
        p.add_argument("--port", type=int, default=2024, help="port to listen on (default: 2024)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentserver", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"agentserver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    dev = sub.add_parser(
        "dev",
        help="run the embedded server: one process, state on local disk",
        description="Run the embedded server: API and queue in one process, no external services. "
        "State (assistants, threads, runs, checkpoints, store) is kept in --data-dir and "
        "survives restarts.",
    )
    _add_common(dev)
    dev.add_argument(
        "--data-dir",
        default=".agentserver",
        help="directory of the embedded database (default: ./.agentserver)",
    )
    dev.set_defaults(host_default="127.0.0.1")

    serve = sub.add_parser(
        "serve",
        help="run an API server on Postgres + Redis (scaled shape)",
        description="Run a stateless API server over Postgres (POSTGRES_URI_CUSTOM) and Redis "
        "(REDIS_URI_CUSTOM). Unless QUEUE_ENABLED=true it also executes runs "
        "(N_JOBS_PER_WORKER at a time); with QUEUE_ENABLED=true only `agentserver worker` "
        "processes execute runs.",
    )
    _add_common(serve)
    serve.set_defaults(host_default="0.0.0.0")

    worker = sub.add_parser(
        "worker",
        help="run a queue worker on Postgres + Redis (scaled shape)",
        description="Run a queue worker: claims runs from Postgres and executes up to "
        "N_JOBS_PER_WORKER at a time, streaming their events through Redis. With --port it "
        "also answers GET /ok for health checks.",
    )
    _add_common(worker, http=False)
    worker.add_argument("--host", default="0.0.0.0", help="interface for the health endpoint")
    worker.add_argument("--port", type=int, default=None, help="serve GET /ok on this port")

    migrate = sub.add_parser(
        "migrate",
        help="apply Postgres schema migrations and exit",
        description="Apply the versioned schema migrations to POSTGRES_URI_CUSTOM and exit. "
        "Safe to run from many replicas at once (an advisory lock serialises them).",
    )
    migrate.set_defaults(config=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        raise SystemExit(2)
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535:
        raise SystemExit(f"agentserver: --port {port} is outside 1-65535")
    from agentserver.runtime import StartupError

    try:
        _main(args)
    except StartupError as exc:
        raise SystemExit(f"agentserver: {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C before the server installed its own handlers
        raise SystemExit(130) from None


def _main(args: argparse.Namespace) -> None:
    from agentserver.logging import configure_logging

    if args.command == "migrate":
        settings = _settings_or_exit()
        configure_logging(settings)
        _migrate(settings)
        return

    from agentserver.config import ConfigError, apply_env, check_supported, ignored_keys, load_config
    from agentserver.errors import GraphLoadError
    from agentserver.graphs import GraphRegistry
    from agentserver.runtime import StartupError
    from agentserver.settings import Settings, SettingsError, default_langsmith_tracing, ignored_env

    try:  # until the project's env is applied: warnings while reading the config are formatted too
        configure_logging(Settings.from_env())
    except SettingsError:
        configure_logging(Settings())
    try:
        cfg = load_config(args.config)
        check_supported(cfg)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    apply_env(cfg)
    settings = _settings_or_exit()
    configure_logging(settings)
    shape = "embedded" if args.command == "dev" else "scaled"
    warnings, infos = ignored_keys(cfg)
    for line in ignored_env(os.environ, shape) + warnings:
        log.warning(line)
    for line in infos:
        log.info(line)
    if default_langsmith_tracing(os.environ):
        log.info("LANGSMITH_API_KEY is set: runs are traced to LangSmith (LANGSMITH_TRACING=false turns it off)")

    host = args.host or getattr(args, "host_default", "127.0.0.1")
    data_dir = None
    if args.command == "dev":
        data_dir = Path(args.data_dir).expanduser().resolve()
        _lock_data_dir(data_dir)
    sock = _bind(host, args.port) if args.port is not None else None
    try:
        graphs = GraphRegistry.from_config(cfg)
    except GraphLoadError as exc:
        raise StartupError(str(exc)) from None
    log.info(f"loaded {len(cfg.graphs)} graph(s) from {cfg.path}: " + ", ".join(cfg.graphs))

    from agentserver import runtime as rt_mod

    if args.command == "dev":
        assert data_dir is not None  # set above for `dev`
        log.info(f"data directory: {data_dir}")
        rt = rt_mod.build_embedded(settings, graphs, data_dir)
    elif args.command == "serve":
        rt = rt_mod.build_scaled(settings, graphs, role="api")
    else:
        rt = rt_mod.build_scaled(settings, graphs, role="worker")

    if args.command == "worker":
        _run(_run_worker(rt, sock, _url(host, args.port) + "/ok" if sock is not None else None))
    else:
        assert sock is not None  # `dev` and `serve` always have a --port (default 2024)
        _run(_serve_http(rt, sock, _url(host, args.port)))


def _run(coro) -> None:
    if _has("uvloop"):
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def _settings_or_exit():
    from agentserver.runtime import StartupError
    from agentserver.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise StartupError(str(exc)) from None


def _url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _lock_data_dir(path: Path) -> None:
    """Hold an exclusive lock on the data directory for the life of the process: two embedded
    servers on one directory would each run the other's runs and fight over its files."""
    import fcntl

    from agentserver.runtime import StartupError

    lock = path / LOCK_FILENAME
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot use the data directory {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            f"the data directory {path} is in use by another agentserver dev (pid {holder}, lock "
            f"{lock}); stop it or choose another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held_locks.append(fd)


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket before anything starts, so a taken port is a one-line error."""
    from agentserver.runtime import StartupError

    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {where}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"cannot listen on {where}: the port is already in use (choose another with --port)"
            ) from None
        raise StartupError(f"cannot listen on {where}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


async def _start(rt, shutdown: _Shutdown) -> None:
    """Start the runtime; a signal during start-up abandons it."""
    from agentserver.runtime import StartupError

    try:
        await rt.start()
    except asyncio.CancelledError:
        if shutdown.count:
            raise StartupError("interrupted during start-up") from None
        raise
    shutdown.serving = True


async def _serve_http(rt, sock: socket.socket, url: str) -> None:
    import uvicorn

    from agentserver.api import create_app

    shutdown = _Shutdown(rt)
    await _start(rt, shutdown)
    app = create_app(rt, manage_runtime=False)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=rt.settings.bg_job_shutdown_grace_period_secs + 5,
        http="httptools" if _has("httptools") else "h11",
    )

    def started() -> None:
        log.info(f"Agent Server {__version__} ready at {url}; API docs at {url}{rt.settings.mount_prefix}/docs")

    server = _uvicorn_server(config, started)
    shutdown.server = server
    try:
        await server.serve(sockets=[sock])
    finally:
        await rt.stop()
    shutdown.exit_now_if_forced()


async def _run_worker(rt, sock: socket.socket | None, health_url: str | None) -> None:
    shutdown = _Shutdown(rt)
    await _start(rt, shutdown)
    health = None
    if sock is not None:
        health = await asyncio.start_server(_health_handler, sock=sock)
    log.info(
        f"worker ready ({rt.settings.n_jobs_per_worker} slots)"
        + (f"; health check at {health_url}" if health_url else "")
    )
    try:
        await shutdown.stopping.wait()
    finally:
        if health is not None:
            health.close()
        await rt.stop()
    shutdown.exit_now_if_forced()


class _Shutdown:
    """SIGINT/SIGTERM: the first stops taking runs and drains them for
    BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS; the second stops now (unfinished runs go back to the
    queue); a third exits at once (their leases expire and they resume on the next start).

    Python-level handlers (`signal.signal`), so they also run while a graph blocks the loop."""

    def __init__(self, rt) -> None:
        self.rt = rt
        self.loop = asyncio.get_running_loop()
        self.main = asyncio.current_task()
        self.count = 0
        self.serving = False
        self.forced = False
        self.server = None
        self.stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame) -> None:
        self.count += 1
        if self.count >= 3:
            os.write(2, b"agentserver: exiting at once; unfinished runs resume on the next start\n")
            os._exit(1)
        self.loop.call_soon_threadsafe(self._first if self.count == 1 else self._second)

    def _first(self) -> None:
        if not self.serving:
            if self.main is not None:
                self.main.cancel()
            return
        self.stopping.set()
        if self.server is not None:
            self.server.should_exit = True
        if self.rt.worker is not None:
            # stop claiming and drain now, while the HTTP server closes its connections
            self.rt.worker.begin_stop().add_done_callback(lambda _t: self.loop.call_later(1.0, self._force_http))
        else:
            log.info("shutting down")

    def _second(self) -> None:
        if not self.serving:
            return
        self.forced = True
        log.warning("second signal: stopping now; unfinished runs go back to the queue")
        self.stopping.set()
        if self.rt.worker is not None:
            self.rt.worker.hurry()
        self._force_http()

    def _force_http(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.server.force_exit = True

    def exit_now_if_forced(self) -> None:
        """After a forced or past-grace stop, everything is recorded: exit without waiting for
        threads still running interrupted graph code (sync nodes cannot be stopped)."""
        worker = self.rt.worker
        if self.forced or (worker is not None and worker.interrupted_on_stop):
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(0)


def _uvicorn_server(config, on_started):
    """uvicorn's server minus its signal handling (`_Shutdown` does it), calling `on_started`
    once it listens. Defined on first use: importing uvicorn is not free."""
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                on_started()

    return Server(config)


async def _health_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readline()
        body = b'{"ok":true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
    finally:
        writer.close()


def _migrate(settings) -> None:
    if not settings.postgres_uri:
        raise SystemExit("agentserver: POSTGRES_URI_CUSTOM (or DATABASE_URI / POSTGRES_URI) must be set")
    from agentserver.errors import Unavailable
    from agentserver.runtime import StartupError, redact_uri
    from agentserver.storage.postgres import migrate

    try:
        applied = asyncio.run(migrate(settings.postgres_uri))
    except Unavailable as exc:
        raise StartupError(f"cannot reach Postgres at {redact_uri(settings.postgres_uri)}: {exc.detail}") from None
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":  # pragma: no cover
    main()
