"""`ctx_pydantic`, `ctx_typeddict`, `ctx_edge`: graphs that read `runtime.context` in their nodes
(and edges) without guarding against None, as users write them.

Each answers `{"seen": <the context it got, as a dict>}`. `ctx_pydantic` declares its context
as a pydantic model with defaults, `ctx_typeddict` as a TypedDict (read with `.get`), and
`ctx_edge` routes on `runtime.context.route` in a conditional edge after `start`, so a state
update `as_node="start"` runs that edge with the thread's assistant's context.
"""

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    value: Any
    seen: dict
    route: str


class ModelContext(BaseModel):
    model: str = "fake-model"
    temperature: float = 0.5


class DictContext(TypedDict, total=False):
    model: str
    temperature: float


def read_model(state: State, runtime: Runtime[ModelContext]) -> State:
    return {"seen": {"model": runtime.context.model, "temperature": runtime.context.temperature}}


def read_dict(state: State, runtime: Runtime[DictContext]) -> State:
    ctx = runtime.context
    return {"seen": {"model": ctx.get("model", "typed-default"), "keys": sorted(ctx)}}


ctx_pydantic = (
    StateGraph(State, context_schema=ModelContext)
    .add_node("read", read_model)
    .add_edge(START, "read")
    .add_edge("read", END)
    .compile()
)

ctx_typeddict = (
    StateGraph(State, context_schema=DictContext)
    .add_node("read", read_dict)
    .add_edge(START, "read")
    .add_edge("read", END)
    .compile()
)


class RouteContext(BaseModel):
    route: str = "left"


def start(state: State) -> State:
    return {}


def pick(state: State, runtime: Runtime[RouteContext]) -> str:
    return runtime.context.route


def left(state: State) -> State:
    return {"route": "left"}


def right(state: State) -> State:
    return {"route": "right"}


ctx_edge = (
    StateGraph(State, context_schema=RouteContext)
    .add_node("start", start)
    .add_node("left", left)
    .add_node("right", right)
    .add_edge(START, "start")
    .add_conditional_edges("start", pick, ["left", "right"])
    .add_edge("left", END)
    .add_edge("right", END)
    .compile()
)
