"""`factory`: an async factory, called by the server once per run with the run's config.

For tests that factories are rebuilt per run and see that run's config. The node returns
`model` (from `config["configurable"]["model"]`, default `"default"`) and `build` (how many
times the factory has been called in this process, when it built this graph).
"""

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

CALLS = 0


class State(TypedDict, total=False):
    value: Any
    model: str
    build: int


async def make_graph(config: RunnableConfig):
    global CALLS
    CALLS += 1
    build = CALLS
    model = (config.get("configurable") or {}).get("model", "default")

    def answer(state: State) -> State:
        return {"model": model, "build": build}

    return StateGraph(State).add_node("answer", answer).add_edge(START, "answer").add_edge("answer", END).compile()
