"""`hitl`: human in the loop. Node `ask` calls `interrupt({"question": ...})`; resuming with
`Command(resume=answer)` stores the answer, then node `done` marks the run finished.

For tests of interrupted runs and threads (status `interrupted`, `interrupts` on the thread,
`__interrupt__` in values/updates streams) and of resuming with a command.
Input: optional `question`. Output after resume: `{"question": ..., "answer": answer, "done": True}`.
"""

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    question: str
    answer: Any
    done: bool


def ask(state: State) -> State:
    answer = interrupt({"question": state.get("question", "Continue?")})
    return {"answer": answer}


def done(state: State) -> State:
    return {"done": True}


builder = StateGraph(State)
builder.add_node("ask", ask)
builder.add_node("done", done)
builder.add_edge(START, "ask")
builder.add_edge("ask", "done")
builder.add_edge("done", END)
graph = builder.compile()
