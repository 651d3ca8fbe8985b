"""The composition root: build storage, broker, graphs, services and (optionally) a worker for
one process of one shape. Nothing else wires components together."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog

from agentserver.broker.base import Broker
from agentserver.graphs import GraphRegistry
from agentserver.settings import Settings
from agentserver.storage.base import Storage

if TYPE_CHECKING:
    from agentserver.worker import Worker

log = structlog.get_logger(__name__)

Shape = Literal["embedded", "scaled"]


@dataclass
class Runtime:
    settings: Settings
    shape: Shape
    storage: Storage
    broker: Broker
    graphs: GraphRegistry
    run_jobs: bool = True  # does this process execute runs?
    services: "Services" = field(init=False)
    worker: "Worker | None" = field(init=False, default=None)
    _background: list[asyncio.Task] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.services = Services(self)

    async def start(self) -> None:
        await self._when_available("storage", self.storage.setup)
        await self._when_available("broker", self.broker.setup)
        await self.services.assistants.ensure_system_assistants()
        if self.run_jobs:
            from agentserver.worker import Worker

            self.worker = Worker(self)
            await self.worker.start()
        self._background.append(asyncio.create_task(self.services.threads.ttl_sweeper()))

    async def _when_available(self, what: str, setup) -> None:
        """Start-up waits up to STARTUP_WAIT_SECS for a backing service that is not up yet
        (e.g. Postgres or Redis starting at the same time as the server)."""
        from agentserver.errors import Unavailable

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.startup_wait_secs
        delay = 0.2
        while True:
            try:
                await setup()
                return
            except Unavailable as exc:
                if loop.time() + delay > deadline:
                    raise
                log.warning("waiting for backing service", what=what, error=exc.detail)
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
        from agentserver.services.assistants import AssistantService
        from agentserver.services.runs import RunService
        from agentserver.services.threads import ThreadService

        self.assistants = AssistantService(rt.storage, rt.graphs)
        self.threads = ThreadService(rt.storage, rt.graphs, rt.broker, rt.settings)
        self.runs = RunService(rt)


def build_embedded(settings: Settings, graphs: GraphRegistry, data_dir: str | Path) -> Runtime:
    from agentserver.broker.memory import MemoryBroker
    from agentserver.storage.embedded import EmbeddedStorage

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
        raise SystemExit("POSTGRES_URI_CUSTOM (or DATABASE_URI / POSTGRES_URI) must be set")
    if not settings.redis_uri:
        raise SystemExit("REDIS_URI_CUSTOM (or REDIS_URI) must be set")
    run_jobs = role == "worker" or not settings.queue_enabled
    return Runtime(
        settings=settings,
        shape="scaled",
        storage=PostgresStorage(settings.postgres_uri, pool_max_size=settings.postgres_pool_max_size),
        broker=RedisBroker(settings),
        graphs=graphs,
        run_jobs=run_jobs,
    )
