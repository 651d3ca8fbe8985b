"""`failing`: one node that raises `ValueError("boom")`.

For tests of failed runs: run status `error`, thread status `error`, the error event in streams
(`{"error": "ValueError", "message": "boom"}`), and webhooks on failure.
"""

from typing import Any

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    value: Any


def fail(state: State) -> State:
    raise ValueError("boom")


graph = StateGraph(State).add_node("fail", fail).add_edge(START, "fail").add_edge("fail", END).compile()
