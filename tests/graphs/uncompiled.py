"""`uncompiled`: langgraph.json points at a `StateGraph` builder, not a compiled graph; the
server compiles it once at load time.

For tests that builders are accepted like compiled graphs. Output: `{"compiled_by_server": True}`.
"""

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    value: str
    compiled_by_server: bool


def mark(state: State) -> State:
    return {"compiled_by_server": True}


builder = StateGraph(State).add_node("mark", mark).add_edge(START, "mark").add_edge("mark", END)
