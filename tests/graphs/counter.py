"""`counter`: five async steps (`step_1` ... `step_5`), each sleeping `secs` (default 0) and
recording its execution in the file at `path` (input; optional).

For tests of retries and resumption after a worker dies or a lease expires: each step appends a
JSON line `{"step": ..., "event": "start"|"end", "run_id": ..., "thread_id": ...}` when it starts
and when it ends, so a test can count which steps ran again (a step that finished before the
crash should not start twice when the run resumes from its checkpoint).
Output: `{"steps": ["step_1", ..., "step_5"]}`.
"""

import asyncio
import json
import operator
from typing import Annotated

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

N_STEPS = 5


class State(TypedDict, total=False):
    path: str
    secs: float
    steps: Annotated[list[str], operator.add]


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


async def _record(state: State, config: RunnableConfig, step: str, event: str) -> None:
    path = state.get("path")
    if not path:
        return
    configurable = config.get("configurable") or {}
    line = json.dumps(
        {
            "step": step,
            "event": event,
            "run_id": str(configurable.get("run_id", "")),
            "thread_id": str(configurable.get("thread_id", "")),
        }
    )
    await asyncio.to_thread(_append, path, line)


def make_step(name: str):
    async def step(state: State, config: RunnableConfig) -> State:
        await _record(state, config, name, "start")
        await asyncio.sleep(state.get("secs", 0))
        await _record(state, config, name, "end")
        return {"steps": [name]}

    step.__name__ = name
    return step


builder = StateGraph(State)
previous = START
for i in range(1, N_STEPS + 1):
    name = f"step_{i}"
    builder.add_node(name, make_step(name))
    builder.add_edge(previous, name)
    previous = name
builder.add_edge(previous, END)

graph = builder.compile()
