"""`subgraph`: a parent graph `before -> child -> after` where `child` is a compiled subgraph
with its own nodes `child_1 -> child_2`. Every node appends its name to `steps`; the child nodes
also write a custom event `{"node": name}`. Parent and child share the `State` schema; `steps`
has no reducer (each node writes the whole list), so the child's output replaces the parent's
list instead of being added to it a second time.

For tests of `subgraphs=True` streaming (events named `updates|child:<task_id>`), checkpoint
namespaces, state with `subgraphs=True`, and the `/assistants/{id}/subgraphs` API.
Output: `{"steps": ["before", "child_1", "child_2", "after"]}`.
"""

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    steps: list[str]


def record(name: str, *, custom: bool = False):
    def node(state: State) -> State:
        if custom:
            get_stream_writer()({"node": name})
        return {"steps": [*state.get("steps", []), name]}

    node.__name__ = name
    return node


child = StateGraph(State)
child.add_node("child_1", record("child_1", custom=True))
child.add_node("child_2", record("child_2", custom=True))
child.add_edge(START, "child_1")
child.add_edge("child_1", "child_2")
child.add_edge("child_2", END)

parent = StateGraph(State)
parent.add_node("before", record("before"))
parent.add_node("child", child.compile())
parent.add_node("after", record("after"))
parent.add_edge(START, "before")
parent.add_edge("before", "child")
parent.add_edge("child", "after")
parent.add_edge("after", END)

graph = parent.compile()
