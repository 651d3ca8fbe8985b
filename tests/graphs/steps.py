"""`steps`: ten nodes in a chain (`step_0` ... `step_9`), each appending its name to `steps`.

For tests of `updates`/`debug`/`tasks` stream modes, checkpoints per step (history, durability
modes, `interrupt_before`/`interrupt_after` on a named node) and replay from a checkpoint.
Output: `{"steps": ["step_0", ..., "step_9"]}` (appended to whatever `steps` was given).
"""

import operator
from typing import Annotated

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

N_STEPS = 10


class State(TypedDict, total=False):
    steps: Annotated[list[str], operator.add]


def make_step(name: str):
    def step(state: State) -> State:
        return {"steps": [name]}

    step.__name__ = name
    return step


builder = StateGraph(State)
previous = START
for i in range(N_STEPS):
    name = f"step_{i}"
    builder.add_node(name, make_step(name))
    builder.add_edge(previous, name)
    previous = name
builder.add_edge(previous, END)

graph = builder.compile()
