"""Graph factories: how the server calls a function of langgraph.json that builds a graph.

A factory takes no argument, the call's `RunnableConfig`, a
`langgraph_sdk.runtime.ServerRuntime`, or both (in either order), as the official server
accepts. The runtime parameter is recognised by its annotation (`ServerRuntime`,
`ServerRuntime[Ctx]`, `Annotated[ServerRuntime, ...]`, or a string naming one), or, without an
annotation, by the name `runtime`; the other parameter gets the config. A factory may be sync
or async, return a graph (compiled or a `StateGraph`), or work as a (async) context manager or
(async) generator yielding one.

The runtime is the execution variant (`runtime.execution_runtime` set, with the run's
`context`) while a run executes (`threads.create_run`) and the read variant otherwise
(`threads.read` for state and history, `threads.update` for state updates, `assistants.read`
for schemas and drawings). `store` is the server's store; `user` stays None until custom auth
exists.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import typing
from collections.abc import Callable
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from typing import Any, Literal

from langgraph.graph.state import StateGraph
from langgraph.pregel import Pregel

# The SDK has no public constructor for its runtime variants; these are the classes the
# ServerRuntime alias is made of.
from langgraph_sdk.runtime import ServerRuntime, _ExecutionRuntime, _ReadRuntime

AccessContext = Literal["threads.create_run", "threads.update", "threads.read", "assistants.read"]
CREATE_RUN: AccessContext = "threads.create_run"
UPDATE: AccessContext = "threads.update"
READ: AccessContext = "threads.read"
INTROSPECT: AccessContext = "assistants.read"

_RUNTIME_TYPES = (_ExecutionRuntime, _ReadRuntime)
_RUNTIME_NAMES = ("ServerRuntime", "_ExecutionRuntime", "_ReadRuntime")


class FactoryError(ValueError):
    """The factory's signature is not one the server can call."""


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    index: int  # position in the signature
    positional_only: bool


@dataclass(frozen=True, slots=True)
class FactoryCall:
    """Which of (config, runtime) a factory takes, and how to pass each."""

    config: _Param | None = None
    runtime: _Param | None = None
    star_args: bool = False  # `def f(*args)`: the config, positionally (as before this module)

    def arguments(self, config: Any, runtime: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        given = [(p, v) for p, v in ((self.config, config), (self.runtime, runtime)) if p is not None]
        for param, value in sorted(given, key=lambda pv: pv[0].index):
            if param.positional_only:
                args.append(value)
            else:
                kwargs[param.name] = value
        if self.star_args and not given:
            args.append(config)
        return tuple(args), kwargs


def classify(factory: Callable[..., Any]) -> FactoryCall:
    """How to call `factory`; raises `FactoryError` for a signature the server cannot serve."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return FactoryCall(star_args=True)
    hints = _hints(factory)
    params = [
        p
        for p in signature.parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    star_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values())
    if len(params) > 2:
        # Extra parameters with defaults are left to their defaults.
        params = [p for p in params if p.default is inspect.Parameter.empty]
    if len(params) > 2:
        raise FactoryError(
            f"a graph factory takes at most two parameters (config and/or runtime), got "
            f"{', '.join(p.name for p in params)}"
        )
    if not params:
        return FactoryCall(star_args=star_args)
    is_runtime = [_is_runtime(p, hints) for p in params]
    if len(params) == 1:
        param = _param(params[0], 0)
        return FactoryCall(runtime=param) if is_runtime[0] else FactoryCall(config=param)
    if is_runtime.count(True) != 1:
        raise FactoryError(
            "a graph factory with two parameters takes a RunnableConfig and a ServerRuntime; annotate "
            f"the runtime one as langgraph_sdk.runtime.ServerRuntime (got {params[0].name}, {params[1].name})"
        )
    runtime_index = is_runtime.index(True)
    config_index = 1 - runtime_index
    return FactoryCall(
        config=_param(params[config_index], config_index), runtime=_param(params[runtime_index], runtime_index)
    )


def _param(p: inspect.Parameter, index: int) -> _Param:
    return _Param(name=p.name, index=index, positional_only=p.kind is inspect.Parameter.POSITIONAL_ONLY)


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory
    while isinstance(target, functools.partial):
        target = target.func
    try:
        return typing.get_type_hints(target, localns={"ServerRuntime": ServerRuntime}, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw ones
        return {}


def _is_runtime(param: inspect.Parameter, hints: dict[str, Any]) -> bool:
    annotation = hints.get(param.name, param.annotation)
    if annotation is inspect.Parameter.empty:
        return param.name == "runtime"
    return _is_runtime_annotation(annotation)


def _is_runtime_annotation(annotation: Any) -> bool:
    if annotation is ServerRuntime or annotation in _RUNTIME_TYPES:
        return True
    if isinstance(annotation, str):  # a forward reference that could not be resolved
        base = annotation.split("[", 1)[0].strip().rsplit(".", 1)[-1]
        return base in _RUNTIME_NAMES
    origin = typing.get_origin(annotation)
    if origin is None:
        return False
    if origin is ServerRuntime or origin in _RUNTIME_TYPES:
        return True
    if origin is typing.Annotated:
        return _is_runtime_annotation(typing.get_args(annotation)[0])
    # `ServerRuntime[Ctx] | None` and the alias's own union of its two variants
    args = typing.get_args(annotation)
    return bool(args) and any(_is_runtime_annotation(a) for a in args if a is not type(None))


def server_runtime(access: AccessContext, *, store: Any, context: Any = None) -> Any:
    """The `ServerRuntime` handed to a factory for one call."""
    if access == CREATE_RUN:
        return _ExecutionRuntime(
            access_context=access,
            user=None,
            store=store,
            context=copy.copy(context) if context is not None else None,
        )
    return _ReadRuntime(access_context=access, user=None, store=store)


async def invoke(
    factory: Callable[..., Any], call: FactoryCall, config: Any, runtime: Any, stack: AsyncExitStack
) -> Any:
    """Call the factory and enter what it returns if that is a context manager; the context
    is exited when `stack` closes. Returns what the factory built (not yet checked)."""
    args, kwargs = call.arguments(config, runtime)
    if inspect.isasyncgenfunction(factory):
        result: Any = asynccontextmanager(factory)(*args, **kwargs)
    elif inspect.isgeneratorfunction(factory):
        result = contextmanager(factory)(*args, **kwargs)
    elif _is_async_callable(factory):
        result = await factory(*args, **kwargs)
    else:
        # User code of unknown cost (often compiles a graph): keep it off the event loop.
        result = await asyncio.to_thread(factory, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    if isinstance(result, AbstractAsyncContextManager) or (
        hasattr(result, "__aenter__") and hasattr(result, "__aexit__")
    ):
        return await stack.enter_async_context(result)
    if isinstance(result, AbstractContextManager) and not _is_graph(result):
        return await _enter_sync_context(result, stack)
    return result


def _is_graph(obj: Any) -> bool:
    return isinstance(obj, (Pregel, StateGraph))


async def _enter_sync_context(cm: AbstractContextManager, stack: AsyncExitStack) -> Any:
    """Enter a sync context manager in a thread and schedule its exit (also in a thread)."""
    value = await asyncio.to_thread(cm.__enter__)

    async def _exit(exc_type: Any, exc: Any, tb: Any) -> bool | None:
        return await asyncio.to_thread(cm.__exit__, exc_type, exc, tb)

    stack.push_async_exit(_exit)
    return value


def _is_async_callable(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(type(obj).__call__)


__all__ = [
    "AccessContext",
    "CREATE_RUN",
    "FactoryCall",
    "FactoryError",
    "INTROSPECT",
    "READ",
    "UPDATE",
    "classify",
    "invoke",
    "server_runtime",
]
