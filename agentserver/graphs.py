"""The project's graphs: loaded from langgraph.json, built per run (with the context a run
passes them: `context_for`), and described for the API.

A graph spec is `./path/to/file.py:attr` (relative to the config's folder) or
`package.module:attr`. The attribute may be:

- a compiled graph (any `Pregel`, including `@entrypoint` functions): shared by every run;
- an uncompiled `StateGraph`: compiled once at load time;
- a factory (see `agentserver.factory`): a sync or async function taking no argument, the
  call's `RunnableConfig`, a `ServerRuntime`, or both, returning a graph (compiled or not), or a
  context manager (sync or async) yielding one, or a (async) generator function yielding one. A
  factory is called once PER RUN (and per state read or introspection request) and its context
  is exited when the call ends.

Files are imported as modules registered in `sys.modules`, so classes defined there can be
pickled and found again by the checkpoint serializer. A file inside a package (its folder has an
`__init__.py`) is imported under its dotted package name, so relative imports work.

A run never mutates the shared compiled graph: `registry.graph(...)` yields a shallow copy with the
run's checkpointer and store attached. (`Pregel.copy()` re-runs `__init__`, which drops attributes
set by `compile()` such as the v2 output mappers, so a plain shallow copy is used instead.)
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID, uuid5

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.channels.base import BaseChannel
from langgraph.graph.state import StateGraph
from langgraph.pregel import Pregel
from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict, is_typeddict

from agentserver.config import ProjectConfig
from agentserver.errors import GraphLoadError, InvalidInput
from agentserver.factory import INTROSPECT, AccessContext, FactoryCall, FactoryError, classify, invoke, server_runtime
from agentserver.wire import describe_error

logger = logging.getLogger(__name__)

SYSTEM_ASSISTANT_NAMESPACE = UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")

_MODULE_PREFIX = "agentserver_graphs_"


def system_assistant_id(graph_id: str) -> str:
    """The id of the assistant made at start-up for a graph (stable across restarts and servers)."""
    return str(uuid5(SYSTEM_ASSISTANT_NAMESPACE, graph_id))


class GraphNotFound(InvalidInput):
    """No graph with this id is declared in langgraph.json."""


@dataclass
class _Entry:
    graph_id: str
    spec: str
    source: str
    description: str | None
    graph: Pregel | None = None
    factory: Callable[..., Any] | None = None
    call: FactoryCall | None = None  # how the factory takes (config, runtime)


class GraphRegistry:
    """The graphs a server can run, by graph id (in the order they were declared)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_config(cls, cfg: ProjectConfig) -> GraphRegistry:
        """Import every graph of the project. Raises `GraphLoadError` on the first one that fails.
        Imports run user code: call it from a thread (`afrom_config`) inside a running loop."""
        registry = cls()
        for graph_id, spec in cfg.graphs.items():
            obj, source = _import_spec(graph_id, spec, cfg.base_dir)
            registry.register(graph_id, obj, description=cfg.descriptions.get(graph_id), spec=spec, source=source)
        return registry

    @classmethod
    async def afrom_config(cls, cfg: ProjectConfig) -> GraphRegistry:
        return await asyncio.to_thread(cls.from_config, cfg)

    def register(
        self,
        graph_id: str,
        obj: Any,
        *,
        description: str | None = None,
        spec: str | None = None,
        source: str | None = None,
    ) -> None:
        """Add a graph object (compiled graph, StateGraph or factory) under `graph_id`."""
        source = source or spec or f"<{type(obj).__name__}>"
        entry = _Entry(graph_id=graph_id, spec=spec or source, source=source, description=description)
        if isinstance(obj, Pregel):
            _warn_own_persistence(graph_id, obj)
            entry.graph = obj
        elif isinstance(obj, StateGraph):
            try:
                entry.graph = obj.compile()
            except Exception as exc:
                raise GraphLoadError(
                    graph_id, source, f"cannot compile the StateGraph: {describe_error(exc, typed=True)}"
                ) from exc
        elif callable(obj) and not isinstance(obj, type):
            try:
                entry.call = classify(obj)
            except FactoryError as exc:
                raise GraphLoadError(graph_id, source, str(exc)) from None
            entry.factory = obj
        else:
            raise GraphLoadError(
                graph_id,
                source,
                f"expected a compiled graph, a StateGraph or a factory function, got {type(obj).__name__}",
            )
        self._entries[graph_id] = entry

    # ------------------------------------------------------------------ lookup

    def graph_ids(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, graph_id: object) -> bool:
        return graph_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def system_assistant_id(self, graph_id: str) -> str:
        return system_assistant_id(graph_id)

    def description(self, graph_id: str) -> str | None:
        return self._entry(graph_id).description

    def is_factory(self, graph_id: str) -> bool:
        return self._entry(graph_id).factory is not None

    def _entry(self, graph_id: str) -> _Entry:
        try:
            return self._entries[graph_id]
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise GraphNotFound(f"Graph '{graph_id}' not found. Known graphs: {known}") from None

    # ------------------------------------------------------------------ per run

    @asynccontextmanager
    async def graph(
        self,
        graph_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        access: AccessContext = INTROSPECT,
        checkpointer: Any = None,
        store: Any = None,
        context: Any = None,
    ) -> AsyncIterator[Pregel]:
        """The graph to run, with `checkpointer` / `store` attached when given (the shared compiled
        graph is never mutated). For a factory, calls it with `config` and/or a `ServerRuntime`
        for `access` (with `context` when a run executes) and exits its context (if it yielded
        from one) when the block ends, passing along any exception of the block."""
        entry = self._entry(graph_id)
        if entry.graph is not None:
            yield _attach(entry.graph, checkpointer, store)
            return
        async with AsyncExitStack() as stack:
            needs_runtime = entry.call is not None and entry.call.runtime is not None
            runtime = server_runtime(access, store=store, context=context) if needs_runtime else None
            built = await self._build(entry, config, runtime, stack)
            yield _attach(built, checkpointer, store)

    async def _build(
        self, entry: _Entry, config: Mapping[str, Any] | None, runtime: Any, stack: AsyncExitStack
    ) -> Pregel:
        assert entry.factory is not None and entry.call is not None
        run_config: dict[str, Any] = dict(config or {})
        run_config["configurable"] = dict(run_config.get("configurable") or {})
        # As on the official server, `langgraph.config.get_config()` inside a factory is the call's config.
        token = var_child_runnable_config.set(run_config)  # type: ignore[arg-type]
        try:
            result = await invoke(entry.factory, entry.call, run_config, runtime, stack)
        except GraphLoadError:
            raise
        except Exception as exc:
            raise GraphLoadError(
                entry.graph_id, entry.source, f"the factory failed: {describe_error(exc, typed=True)}"
            ) from exc
        finally:
            var_child_runnable_config.reset(token)
        return await self._coerce(entry, result)

    async def _coerce(self, entry: _Entry, result: Any) -> Pregel:
        if isinstance(result, Pregel):
            return result
        if isinstance(result, StateGraph):
            try:
                return await asyncio.to_thread(result.compile)
            except Exception as exc:
                raise GraphLoadError(
                    entry.graph_id,
                    entry.source,
                    f"cannot compile the factory's StateGraph: {describe_error(exc, typed=True)}",
                ) from exc
        raise GraphLoadError(
            entry.graph_id,
            entry.source,
            f"the factory returned {type(result).__name__}, expected a compiled graph or a StateGraph",
        )

    # ------------------------------------------------------------------ introspection

    async def graph_json(
        self, graph_id: str, config: RunnableConfig | None = None, *, xray: bool | int = False, store: Any = None
    ) -> dict[str, Any]:
        """The drawable graph (`get_graph(xray=...).to_json()`): nodes and edges."""
        async with self.graph(graph_id, config, store=store) as graph:
            return await asyncio.to_thread(_drawable_json, graph, config, xray)

    async def schemas(
        self, graph_id: str, config: Mapping[str, Any] | None = None, *, store: Any = None
    ) -> dict[str, Any]:
        """JSON schemas of the graph: graph_id, input_schema, output_schema, state_schema,
        config_schema, context_schema (each None when it cannot be produced)."""
        async with self.graph(graph_id, config, store=store) as graph:
            return await asyncio.to_thread(_schemas_of, graph_id, graph)

    async def subgraphs(
        self,
        graph_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        namespace: str | None = None,
        recurse: bool = False,
        store: Any = None,
    ) -> dict[str, dict[str, Any]]:
        """namespace -> schemas of each subgraph (only the one at `namespace` when given)."""
        async with self.graph(graph_id, config, store=store) as graph:
            found = [(ns, sub) async for ns, sub in graph.aget_subgraphs(namespace=namespace, recurse=recurse)]
            return await asyncio.to_thread(lambda: {ns: _schemas_of(graph_id, sub) for ns, sub in found})


# ---------------------------------------------------------------------- importing


def _import_spec(graph_id: str, spec: str, base_dir: Path) -> tuple[Any, str]:
    """Import the object a spec names; returns it and a human-readable source for messages."""
    module_ref, _, attr = spec.rpartition(":")
    if not module_ref or not attr:
        raise GraphLoadError(graph_id, spec, "the spec must look like './file.py:graph' or 'package.module:graph'")
    is_file = (
        module_ref.endswith(".py") or module_ref.startswith((".", "/", "~")) or "/" in module_ref or "\\" in module_ref
    )
    if is_file:
        path = (base_dir / Path(module_ref).expanduser()).resolve()
        source = f"{module_ref} ({path})"
        if path.suffix in (".ts", ".js", ".mts", ".cts", ".mjs", ".tsx", ".jsx"):
            raise GraphLoadError(graph_id, source, "only Python graphs are supported")
        if not path.is_file():
            raise GraphLoadError(graph_id, source, "file not found")
        try:
            module = _import_file(path, base_dir)
        except Exception as exc:
            raise GraphLoadError(graph_id, source, describe_error(exc, typed=True)) from exc
    else:
        source = f"module {module_ref}"
        try:
            module = importlib.import_module(module_ref)
        except Exception as exc:
            raise GraphLoadError(graph_id, source, describe_error(exc, typed=True)) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise GraphLoadError(graph_id, source, f"{module.__name__!s} has no attribute {attr!r}") from None
    return obj, source


def _import_file(path: Path, base_dir: Path) -> ModuleType:
    _append_sys_path(str(path.parent))
    dotted, root = _package_name(path)
    if dotted is not None and root is not None:
        _append_sys_path(str(root))
        existing = sys.modules.get(dotted)
        if existing is not None and _same_file(existing, path):
            return existing
        if existing is None and not _shadowed(dotted, root):
            module = importlib.import_module(dotted)
            if _same_file(module, path):
                return module
    return _load_by_path(path, base_dir)


def _package_name(path: Path) -> tuple[str | None, Path | None]:
    """`a.b.mod` and the folder holding `a`, when the file sits inside a package."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier():
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) == 1 or not path.stem.isidentifier():
        return None, None
    return ".".join(parts), folder


def _shadowed(dotted: str, root: Path) -> bool:
    """True when the top-level package name is already taken by a different folder."""
    top = dotted.split(".", 1)[0]
    loaded = sys.modules.get(top)
    if loaded is None:
        return False
    locations = [Path(p).resolve() for p in getattr(loaded, "__path__", []) or []]
    return (root / top).resolve() not in locations


def _load_by_path(path: Path, base_dir: Path) -> ModuleType:
    name = _module_name(path, base_dir)
    existing = sys.modules.get(name)
    if existing is not None and _same_file(existing, path):
        return existing
    if existing is not None:  # another project's file with the same relative path
        name = f"{name}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        existing = sys.modules.get(name)
        if existing is not None:
            return existing
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _module_name(path: Path, base_dir: Path) -> str:
    """A stable, importable-looking name derived from the path relative to the config folder, so
    every process of a deployment gives the same file the same module name."""
    try:
        relative = path.relative_to(base_dir).with_suffix("")
        text = "_".join(relative.parts)
    except ValueError:
        # Outside the config folder (`../x.py`): name it by its path relative to the folder.
        relative = Path(_relpath(path, base_dir)).with_suffix("")
        text = "_".join(p if p != ".." else "up" for p in relative.parts)
    return _MODULE_PREFIX + re.sub(r"\W", "_", text)


def _relpath(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _same_file(module: ModuleType, path: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve() == path


def _append_sys_path(entry: str) -> None:
    if entry not in sys.path:
        sys.path.append(entry)


def _attach(graph: Pregel, checkpointer: Any, store: Any) -> Pregel:
    if checkpointer is None and store is None:
        return graph
    attached = copy.copy(graph)
    if checkpointer is not None:
        attached.checkpointer = checkpointer
    if store is not None:
        attached.store = store
    return attached


def _warn_own_persistence(graph_id: str, graph: Pregel) -> None:
    if graph.checkpointer not in (None, False, True) or graph.store is not None:
        logger.warning(
            "graph '%s' was compiled with its own checkpointer or store; the server replaces them "
            "with its own for runs",
            graph_id,
        )


# ---------------------------------------------------------------------- run context


def context_for(graph: Any, context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The context a run of ``graph`` gets: ``context`` (an empty mapping when there is none,
    so LangGraph builds the defaults of the graph's ``context_schema``), without the keys that
    schema does not declare (a dataclass or model would refuse them)."""
    given = dict(context or {})
    declared = _declared_fields(getattr(graph, "context_schema", None))
    if declared is None or given.keys() <= declared:
        return given
    return {k: v for k, v in given.items() if k in declared}


def coerce_context(graph: Any, context: Mapping[str, Any] | None) -> Any:
    """``context_for(graph, context)`` as an instance of the graph's ``context_schema`` when
    that is a dataclass or a pydantic model (as LangGraph builds it for a run)."""
    given = context_for(graph, context)
    schema = getattr(graph, "context_schema", None)
    if isinstance(schema, type) and (dataclasses.is_dataclass(schema) or issubclass(schema, BaseModel)):
        return schema(**given)
    return given


def _declared_fields(schema: Any) -> frozenset[str] | None:
    """The field names of a context schema, or None when they cannot be known."""
    if not isinstance(schema, type):
        return None
    if dataclasses.is_dataclass(schema):
        return frozenset(f.name for f in dataclasses.fields(schema) if f.init)
    if issubclass(schema, BaseModel):
        names = set(schema.model_fields)
        names.update(f.alias for f in schema.model_fields.values() if f.alias)
        return frozenset(names)
    if is_typeddict(schema):
        return frozenset(getattr(schema, "__annotations__", {}))
    return None


# ---------------------------------------------------------------------- introspection helpers


def _drawable_json(graph: Pregel, config: RunnableConfig | None, xray: bool | int) -> dict[str, Any]:
    return graph.get_graph(config, xray=xray).to_json()


def _schemas_of(graph_id: str, graph: Any) -> dict[str, Any]:
    return {
        "graph_id": graph_id,
        "input_schema": _try(graph_id, "input", getattr(graph, "get_input_jsonschema", None)),
        "output_schema": _try(graph_id, "output", getattr(graph, "get_output_jsonschema", None)),
        "state_schema": _try(graph_id, "state", lambda: _state_jsonschema(graph)),
        "config_schema": _try(graph_id, "config", lambda: _config_jsonschema(graph)),
        "context_schema": _try(graph_id, "context", getattr(graph, "get_context_jsonschema", None)),
    }


def _try(graph_id: str, what: str, fn: Callable[[], Any] | None) -> Any:
    if fn is None:
        return None
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a schema we cannot draw is reported as None
        logger.info("graph '%s': no %s schema: %s", graph_id, what, describe_error(exc, typed=True))
        return None


def _config_jsonschema(graph: Any) -> dict[str, Any] | None:
    method = getattr(graph, "get_config_jsonschema", None)
    if method is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of context, still what clients show
        return method()


def _state_jsonschema(graph: Any) -> dict[str, Any] | None:
    """The state as a JSON object: one property per state channel, typed by the channel's value
    type (a channel whose type has no JSON schema is typed as anything)."""
    if not isinstance(graph, Pregel):
        return None
    fields: dict[str, Any] = {}
    for name in _state_channels(graph):
        channel = graph.channels.get(name)
        if not isinstance(channel, BaseChannel):
            continue
        try:
            typ = channel.ValueType
            TypeAdapter(typ).json_schema()
        except Exception:  # noqa: BLE001 - unknown types become "any"
            typ = Any
        fields[name] = typ
    state = TypedDict(graph.get_name("State"), fields, total=False)  # type: ignore[misc]  # built at runtime from the channels
    return TypeAdapter(state).json_schema()


def _state_channels(graph: Pregel) -> Iterable[str]:
    channels = graph.stream_channels_asis
    if isinstance(channels, str):
        return [channels]
    return list(channels)


__all__ = [
    "GraphNotFound",
    "GraphRegistry",
    "SYSTEM_ASSISTANT_NAMESPACE",
    "coerce_context",
    "context_for",
    "system_assistant_id",
]
