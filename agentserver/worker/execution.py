"""Execute one run's graph and publish its events: the bridge between a claimed run and the
executor (`agentserver.executor`). Runs on the process's loop, or on an isolated job loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from agentserver.executor import final_state, stream_run
from agentserver.factory import CREATE_RUN, READ
from agentserver.graphs import GraphRegistry
from agentserver.run_spec import RunSpec
from agentserver.storage.base import Record, Storage
from agentserver.utils import dumps

Publish = Callable[[str, str, bytes], Awaitable[Any]]

__all__ = ["Publish", "execute", "read_final_state"]


def _root_config(spec: RunSpec) -> dict:
    """The thread's latest state: the run's config without a fork point."""
    config = spec.config
    configurable = {k: v for k, v in config["configurable"].items() if k not in ("checkpoint_id", "checkpoint_ns")}
    return {**config, "configurable": configurable}


async def _resuming(checkpointer, run: Record) -> bool:
    """A retried run resumes from its last checkpoint when it wrote one."""
    latest = await checkpointer.aget_tuple({"configurable": {"thread_id": run["thread_id"], "checkpoint_ns": ""}})
    return latest is not None and (latest.metadata or {}).get("run_id") == run["run_id"]


async def execute(
    graphs: GraphRegistry, run: Record, spec: RunSpec, attempt: int, publish: Publish, *, checkpointer, store
) -> None:
    """Run `spec`'s graph for attempt `attempt` of `run`, publishing every event. A retried run
    that already wrote a checkpoint resumes from it (no input, no command, no fork point)."""
    config = spec.config
    metadata = {**(config.get("metadata") or {}), "run_attempt": attempt}
    if attempt > 1 and await _resuming(checkpointer, run):
        spec = dataclasses.replace(spec, input=None, command=None, config={**_root_config(spec), "metadata": metadata})
    else:
        spec = dataclasses.replace(spec, config={**config, "metadata": metadata})
    run_id = run["run_id"]
    async with graphs.graph(
        spec.config["configurable"]["graph_id"],
        spec.config,
        access=CREATE_RUN,
        checkpointer=checkpointer,
        store=store,
        context=spec.context,
    ) as graph:
        async for event, payload in stream_run(graph, spec):
            await publish(run_id, event, dumps(payload))


async def read_final_state(graphs: GraphRegistry, storage: Storage, spec: RunSpec) -> tuple[Any, dict, bool]:
    """(values, interrupts by task id, has next nodes) of the thread's latest checkpoint."""
    config = _root_config(spec)
    graph_id = config["configurable"]["graph_id"]
    async with graphs.graph(
        graph_id, config, access=READ, checkpointer=storage.checkpointer, store=storage.store
    ) as graph:
        return await final_state(graph, config)
