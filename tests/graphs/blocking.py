"""`blocking`: one sync node that calls `time.sleep(secs)` (input `secs`, default 1).

For tests that a graph blocking its thread does not stall the server (heartbeats, other runs,
API latency) and of cancelling a run whose node cannot be interrupted mid-call.
Output: `{"secs": secs, "slept": secs}`.
"""

import time

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    secs: float
    slept: float


def block(state: State) -> State:
    secs = state.get("secs", 1)
    time.sleep(secs)
    return {"slept": secs}


graph = StateGraph(State).add_node("block", block).add_edge(START, "block").add_edge("block", END).compile()
