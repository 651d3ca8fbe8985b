"""`sleeper`: one async node that awaits `asyncio.sleep(secs)` (input `secs`, default 1).

For tests of concurrency and cancellation while a run is busy on the event loop: multitask
strategies (reject/interrupt/rollback/enqueue), cancel, timeouts, join while running.
Output: `{"secs": secs, "slept": secs}`.
"""

import asyncio

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    secs: float
    slept: float


async def sleep(state: State) -> State:
    secs = state.get("secs", 1)
    await asyncio.sleep(secs)
    return {"slept": secs}


graph = StateGraph(State).add_node("sleep", sleep).add_edge(START, "sleep").add_edge("sleep", END).compile()
