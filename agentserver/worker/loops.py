"""BG_JOB_ISOLATED_LOOPS: execute graphs on event loops of their own, one thread per job slot,
so a graph that blocks (e.g. `time.sleep`) cannot stall the API's loop. Everything else
(claiming, leases, storage writes, broker publishing) stays on the process's main loop; each
job loop has its own checkpointer resources (`Storage.open_loop_resources`)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import structlog

from agentserver.broker.base import Broker
from agentserver.graphs import GraphRegistry
from agentserver.run_spec import RunSpec
from agentserver.storage.base import Record, Storage
from agentserver.worker.execution import execute

log = structlog.get_logger(__name__)


class JobLoop:
    def __init__(self, index: int) -> None:
        self.index = index
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=f"job-loop-{index}", daemon=True)
        self.resources: Any = None  # (checkpointer, store, aclose)
        self.busy = 0

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro) -> asyncio.Future:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


class LoopPool:
    def __init__(
        self, storage: Storage, broker: Broker, graphs: GraphRegistry, size: int, *, pool_max_size: int
    ) -> None:
        self.storage, self.broker, self.graphs = storage, broker, graphs
        self.pool_max_size = pool_max_size  # database connections shared by the job loops
        self.loops = [JobLoop(i) for i in range(size)]

    async def start(self) -> None:
        pool_size = max(1, self.pool_max_size // max(1, len(self.loops)))
        for jl in self.loops:
            jl.thread.start()
            jl.resources = await jl.call(self.storage.open_loop_resources(pool_size))

    async def stop(self) -> None:
        for jl in self.loops:
            if jl.resources is not None:
                try:
                    await asyncio.wait_for(jl.call(jl.resources[2]()), 5)
                except Exception as exc:  # noqa: BLE001
                    log.warning("closing job loop resources failed", error=repr(exc))
            jl.loop.call_soon_threadsafe(jl.loop.stop)
        for jl in self.loops:
            jl.thread.join(timeout=5)

    def _pick(self) -> JobLoop:
        return min(self.loops, key=lambda jl: jl.busy)

    def submit(self, run: Record, spec: RunSpec, attempt: int) -> asyncio.Future:
        jl = self._pick()
        jl.busy += 1
        main = asyncio.get_running_loop()
        broker = self.broker

        async def publish(run_id: str, event: str, data: bytes) -> None:
            # hop to the main loop, where the broker's connections live; wait for it (backpressure)
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(broker.publish(run_id, event, data), main))

        checkpointer, store, _ = jl.resources
        fut = jl.call(execute(self.graphs, run, spec, attempt, publish, checkpointer=checkpointer, store=store))

        def _done(_f: asyncio.Future) -> None:
            jl.busy -= 1

        fut.add_done_callback(_done)
        return fut
