"""Execute one run's graph and publish its events: the bridge between a claimed run and the
executor (`agentserver.executor`). Runs on the process's loop, or on an isolated job loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from agentserver.executor import RunInput, error_payload, final_state, stream_run
from agentserver.factory import CREATE_RUN, READ
from agentserver.storage.base import Record
from agentserver.utils import dumps

if TYPE_CHECKING:
    from agentserver.runtime import Runtime

Publish = Callable[[str, str, bytes], Awaitable[Any]]

__all__ = ["execute", "read_final_state", "error_payload"]


def _root_config(run: Record) -> dict:
    """The thread's latest state: the run's config without a fork point."""
    config = run["kwargs"]["config"]
    configurable = {k: v for k, v in config["configurable"].items() if k not in ("checkpoint_id", "checkpoint_ns")}
    return {**config, "configurable": configurable}


async def _resuming(checkpointer, run: Record) -> bool:
    """A retried run resumes from its last checkpoint when it wrote one."""
    latest = await checkpointer.aget_tuple(
        {"configurable": {"thread_id": run["thread_id"], "checkpoint_ns": ""}}
    )
    return latest is not None and (latest.metadata or {}).get("run_id") == run["run_id"]


async def execute(rt: "Runtime", run: Record, attempt: int, publish: Publish, *, checkpointer=None, store=None) -> None:
    kwargs = run["kwargs"]
    checkpointer = checkpointer if checkpointer is not None else rt.storage.checkpointer
    store = store if store is not None else rt.storage.store
    config = kwargs["config"]
    config = {**config, "metadata": {**(config.get("metadata") or {}), "run_attempt": attempt}}
    inp, command = kwargs.get("input"), kwargs.get("command")
    if attempt > 1 and await _resuming(checkpointer, run):
        inp, command = None, None
        config = {**_root_config(run), "metadata": config["metadata"]}
    graph_id = config["configurable"]["graph_id"]
    run_id = run["run_id"]
    context = kwargs.get("context")
    async with rt.graphs.graph(
        graph_id, config, access=CREATE_RUN, checkpointer=checkpointer, store=store, context=context
    ) as graph:
        spec = RunInput(
            input=inp,
            command=command,
            config=config,
            context=context,
            stream_mode=list(kwargs.get("stream_mode") or ["values"]),
            stream_subgraphs=bool(kwargs.get("subgraphs")),
            interrupt_before=kwargs.get("interrupt_before"),
            interrupt_after=kwargs.get("interrupt_after"),
            durability=kwargs.get("durability") or "async",
        )
        async for event, payload in stream_run(graph, spec):
            await publish(run_id, event, dumps(payload))


async def read_final_state(rt: "Runtime", run: Record) -> tuple[Any, dict, bool]:
    """(values, interrupts by task id, has next nodes) of the thread's latest checkpoint."""
    config = _root_config(run)
    graph_id = config["configurable"]["graph_id"]
    async with rt.graphs.graph(
        graph_id, config, access=READ, checkpointer=rt.storage.checkpointer, store=rt.storage.store
    ) as graph:
        return await final_state(graph, config)
