"""The composition root: build storage, broker, graphs, services and (optionally) a worker for
one process of one shape. Nothing else wires components together.

Dependencies point one way: the HTTP API uses the services; the services and the worker (with
the executor) both use the ports (storage, broker) and the graphs, never each other. Only this
module knows all of them. The storage and broker backends are imported by the builder of their
shape, so a process loads only its own (redis and psycopg only in the scaled shape)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from agentserver.broker.base import Broker
from agentserver.errors import Unavailable
from agentserver.graphs import GraphRegistry
from agentserver.services.assistants import AssistantService
from agentserver.services.runs import RunService
from agentserver.services.threads import ThreadService
from agentserver.settings import Settings
from agentserver.storage.base import Storage
from agentserver.worker import Worker

log = structlog.get_logger(__name__)

Shape = Literal["embedded", "scaled"]


class StartupError(Exception):
    """The process cannot start; the message (one line) names the cause."""


def redact_uri(uri: str) -> str:
    """A connection URI without its password or query string (which may hold one)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "<unparsable URI>"
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    path = path.partition("?")[0].partition("#")[0]
    return f"{scheme}://{user + '@' if at and user else ''}{hosts}{slash}{path}"


class _ConnectErrors(logging.Filter):
    """Swallows psycopg's pool warnings while start-up waits for Postgres (one per attempt),
    keeping the last connection error for the start-up message."""

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "error connecting" in message:
            self.last = message.split(": ", 1)[-1].splitlines()[0].strip()
        return False


@dataclass
class Runtime:
    settings: Settings
    shape: Shape
    storage: Storage
    broker: Broker
    graphs: GraphRegistry
    run_jobs: bool = True  # does this process execute runs?
    services: Services = field(init=False)
    worker: Worker | None = field(init=False, default=None)
    _background: list[asyncio.Task] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.services = Services(self)

    async def start(self) -> None:
        """Set up storage and broker (waiting up to STARTUP_WAIT_SECS for them), then the worker
        and background tasks. Raises StartupError when a backing service stays unreachable."""
        pool_log = logging.getLogger("psycopg.pool")
        errors = _ConnectErrors()
        pool_log.addFilter(errors)
        try:
            await self._when_available(self._describe("storage"), self.storage.setup, errors)
            await self._when_available(self._describe("broker"), self.broker.setup, errors)
        except BaseException:
            for close in (self.broker.close, self.storage.close):
                try:
                    await asyncio.wait_for(close(), 5)
                except BaseException:  # noqa: BLE001 - already failing; the cause is reported
                    pass
            raise
        finally:
            pool_log.removeFilter(errors)
        await self.services.assistants.ensure_system_assistants()
        if self.run_jobs:
            self.worker = Worker(self.storage, self.broker, self.graphs, self.settings)
            await self.worker.start()
        self._background.append(asyncio.create_task(self.services.threads.ttl_sweeper()))

    def _describe(self, part: str) -> str:
        if self.shape == "embedded":
            return "the embedded database" if part == "storage" else "the in-process broker"
        if part == "storage":
            return f"Postgres at {redact_uri(self.settings.postgres_uri or '')}"
        return f"Redis at {redact_uri(self.settings.redis_uri or '')}"

    async def _when_available(self, what: str, setup, errors: _ConnectErrors) -> None:
        """Start-up waits up to STARTUP_WAIT_SECS for a backing service that is not up yet
        (e.g. Postgres or Redis starting at the same time as the server); one warning says so."""
        wait = self.settings.startup_wait_secs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = 0.2
        warned = False
        errors.last = None
        while True:
            try:
                await setup()
                if warned:
                    log.info("backing service reachable", what=what)
                return
            except Unavailable as exc:
                cause = errors.last or exc.detail
                if loop.time() + delay > deadline:
                    raise StartupError(f"cannot reach {what} after {wait:g}s (STARTUP_WAIT_SECS): {cause}") from None
                if not warned:
                    log.warning(f"waiting up to {wait:g}s for {what}", error=cause)
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        await self.services.runs.close()
        await self.broker.close()
        await self.storage.close()


class Services:
    """The service layer of a runtime, built once."""

    def __init__(self, rt: Runtime) -> None:
        self.assistants = AssistantService(rt.storage, rt.graphs)
        self.threads = ThreadService(rt.storage, rt.graphs, rt.broker, rt.settings)
        self.runs = RunService(rt.storage, rt.broker, rt.settings, self.assistants)


def build_embedded(settings: Settings, graphs: GraphRegistry, data_dir: str | Path) -> Runtime:
    from agentserver.broker.memory import MemoryBroker
    from agentserver.storage.sqlite import EmbeddedStorage

    return Runtime(
        settings=settings,
        shape="embedded",
        storage=EmbeddedStorage(data_dir),
        broker=MemoryBroker(settings),
        graphs=graphs,
        run_jobs=True,
    )


def build_scaled(settings: Settings, graphs: GraphRegistry, *, role: Literal["api", "worker"]) -> Runtime:
    from agentserver.broker.redis import RedisBroker
    from agentserver.storage.postgres import PostgresStorage

    if not settings.postgres_uri:
        raise StartupError("POSTGRES_URI_CUSTOM (or DATABASE_URI / POSTGRES_URI) must be set")
    if not settings.redis_uri:
        raise StartupError("REDIS_URI_CUSTOM (or REDIS_URI) must be set")
    run_jobs = role == "worker" or not settings.queue_enabled
    return Runtime(
        settings=settings,
        shape="scaled",
        storage=PostgresStorage(settings.postgres_uri, pool_max_size=settings.postgres_pool_max_size),
        broker=RedisBroker(settings),
        graphs=graphs,
        run_jobs=run_jobs,
    )
