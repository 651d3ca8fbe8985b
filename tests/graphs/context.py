"""`context`: a graph with a context schema that reports what the run was given.

For tests of run `context` and of the `config.configurable` keys the server fills in (run_id,
thread_id, graph_id, assistant_id, user...). Output: `context` (the run's context as a dict) and
`config_keys` (the JSON-friendly public keys of `config["configurable"]`, internal `__...` keys
left out). Its context schema is `{"model": str = "fake", "temperature": float = 0}`.
"""

from dataclasses import asdict, dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict


@dataclass
class Context:
    model: str = "fake"
    temperature: float = 0.0


class State(TypedDict, total=False):
    value: Any
    context: dict
    config_keys: dict


def _json_friendly(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def report(state: State, config: RunnableConfig, runtime: Runtime[Context]) -> State:
    ctx = runtime.context
    context = asdict(ctx) if ctx is not None and hasattr(ctx, "__dataclass_fields__") else dict(ctx or {})
    configurable = {
        k: v
        for k, v in (config.get("configurable") or {}).items()
        if not k.startswith("__") and _json_friendly(v)
    }
    return {"context": context, "config_keys": configurable}


graph = (
    StateGraph(State, context_schema=Context)
    .add_node("report", report)
    .add_edge(START, "report")
    .add_edge("report", END)
    .compile()
)
