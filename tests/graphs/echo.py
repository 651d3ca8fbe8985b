"""`echo`: one node that returns its input unchanged.

For tests of the plumbing around a run (create/wait/join, thread values, metadata) where the graph
itself must not matter. Input and output keys: `messages` (add_messages) and `value` (anything);
the output is the input, plus `messages: []` when no messages were given.
"""

from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    value: Any


def echo(state: State) -> State:
    # Writing the messages back is a no-op for add_messages (same ids), so output == input.
    return dict(state)


graph = StateGraph(State).add_node("echo", echo).add_edge(START, "echo").add_edge("echo", END).compile()
