"""Graph factories in every form the official server accepts, and broken graphs.

`fac_*` graphs are built per call by a factory of one form; each call is recorded as one JSON
line in a file of `FACTORY_LOG_DIR` (one file per process, so the processes of a scaled
deployment never interleave writes): the form, the access context, whether the runtime is the
execution variant, its context, the store's type, the user, and the config's thread and
assistant ids. Tests read the lines of their own assistant. The graph itself answers
`{"form": ..., "context": <the runtime's context, or None>}`.

`broken_factory` is a factory that raises; `broken_node` compiles fine and raises in its node.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Optional

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph_sdk.runtime import ServerRuntime
from typing_extensions import Annotated, TypedDict

FACTORY_LOG_DIR = Path(tempfile.gettempdir()) / "agentserver-test-factory-calls"


class State(TypedDict, total=False):
    value: Any
    form: str
    context: Any


def _record(form: str, config: RunnableConfig | None, runtime: Any) -> Any:
    if config is None:  # as on the official server, the call's config is the current one
        config = get_config()
    configurable = config.get("configurable") or {}
    ert = runtime.execution_runtime if runtime is not None else None
    line = {
        "form": form,
        "access": runtime.access_context if runtime is not None else None,
        "execution": ert is not None,
        "context": ert.context if ert is not None else None,
        "store": type(runtime.store).__name__ if runtime is not None else None,
        "user": runtime.user if runtime is not None else None,
        "thread_id": configurable.get("thread_id"),
        "assistant_id": configurable.get("assistant_id"),
        "model": configurable.get("model"),
    }
    FACTORY_LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(FACTORY_LOG_DIR / f"{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    return line["context"]


def _graph(form: str, context: Any = None):
    def answer(state: State) -> State:
        return {"form": form, "context": context}

    return StateGraph(State).add_node("answer", answer).add_edge(START, "answer").add_edge("answer", END)


def no_args():
    _record("no_args", None, None)
    return _graph("no_args").compile()


def config_only(config: RunnableConfig):
    _record("config_only", config, None)
    return _graph("config_only")  # an uncompiled StateGraph: the server compiles it


async def runtime_only(rt: ServerRuntime):
    """One parameter, told to be the runtime by its annotation alone."""
    return _graph("runtime_only", _record("runtime_only", None, rt)).compile()


async def config_runtime(config: RunnableConfig, runtime: ServerRuntime):
    return _graph("config_runtime", _record("config_runtime", config, runtime)).compile()


def runtime_config(runtime: Annotated[ServerRuntime, "the server's"], config):
    """Runtime first, and the sync form: parameters are told apart by annotation, not order."""
    return _graph("runtime_config", _record("runtime_config", config, runtime)).compile()


def unannotated(config, runtime):
    """No annotations: the parameter named `runtime` gets the runtime."""
    return _graph("unannotated", _record("unannotated", config, runtime)).compile()


@asynccontextmanager
async def async_cm(config: RunnableConfig, runtime: Optional[ServerRuntime]):
    yield _graph("async_cm", _record("async_cm", config, runtime)).compile()


@contextmanager
def sync_cm(runtime: "ServerRuntime", config: RunnableConfig):
    yield _graph("sync_cm", _record("sync_cm", config, runtime)).compile()


async def async_gen(config: RunnableConfig, runtime: ServerRuntime):
    yield _graph("async_gen", _record("async_gen", config, runtime)).compile()


def broken_factory(config: RunnableConfig, runtime: ServerRuntime):
    _record("broken_factory", config, runtime)
    raise RuntimeError("no model configured for this assistant")


def _explode(state: State) -> State:
    raise KeyError("missing_setting")


broken_node = StateGraph(State).add_node("explode", _explode).add_edge(START, "explode").add_edge("explode", END).compile()
