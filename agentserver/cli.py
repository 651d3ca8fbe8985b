"""The `agentserver` command: dev | serve | worker | migrate."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

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
        "--config", "-c", default="langgraph.json",
        help="path to langgraph.json (default: ./langgraph.json)",
    )
    if http:
        p.add_argument("--host", default=None, help="interface to bind")
        p.add_argument("--port", type=int, default=2024, help="port to listen on (default: 2024)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentserver", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        "--data-dir", default=".agentserver",
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

    from agentserver.logging import configure_logging

    if args.command == "migrate":
        settings = _settings_or_exit()
        configure_logging(settings)
        _migrate(settings)
        return

    from agentserver.config import ConfigError, apply_env, load_config
    from agentserver.graphs import GraphLoadError, GraphRegistry

    try:
        cfg = load_config(args.config)
    except (ConfigError, FileNotFoundError) as exc:
        raise SystemExit(f"agentserver: {exc}") from None
    apply_env(cfg)
    settings = _settings_or_exit()
    configure_logging(settings)
    try:
        graphs = GraphRegistry.from_config(cfg)
    except GraphLoadError as exc:
        raise SystemExit(f"agentserver: {exc}") from None

    from agentserver import runtime as rt_mod

    if args.command == "dev":
        rt = rt_mod.build_embedded(settings, graphs, Path(args.data_dir))
    elif args.command == "serve":
        rt = rt_mod.build_scaled(settings, graphs, role="api")
    else:
        rt = rt_mod.build_scaled(settings, graphs, role="worker")

    host = args.host or getattr(args, "host_default", "127.0.0.1")
    if args.command == "worker":
        if _has("uvloop"):
            import uvloop

            uvloop.run(_run_worker(rt, host, args.port))
        else:
            asyncio.run(_run_worker(rt, host, args.port))
    else:
        _serve_http(rt, host, args.port)


def _settings_or_exit():
    from agentserver.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"agentserver: {exc}") from None


def _serve_http(rt, host: str, port: int) -> None:
    import uvicorn

    from agentserver.api import create_app

    app = create_app(rt)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=rt.settings.bg_job_shutdown_grace_period_secs + 5,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
    )
    server = uvicorn.Server(config)
    server.run()


async def _run_worker(rt, host: str, port: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await rt.start()
    health = None
    if port is not None:
        health = await asyncio.start_server(_health_handler, host, port)
    try:
        await stop.wait()
    finally:
        if health is not None:
            health.close()
        await rt.stop()


async def _health_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readline()
        body = b'{"ok":true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        await writer.drain()
    finally:
        writer.close()


def _migrate(settings) -> None:
    if not settings.postgres_uri:
        raise SystemExit("agentserver: POSTGRES_URI_CUSTOM (or DATABASE_URI / POSTGRES_URI) must be set")
    from agentserver.storage.migrate import migrate

    applied = asyncio.run(migrate(settings.postgres_uri))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":  # pragma: no cover
    main()
