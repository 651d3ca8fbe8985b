"""Assistants: versioned configurations of the project's graphs.

Rules kept here:
  * one system assistant per graph, made at start-up (`ensure_system_assistants`);
  * everywhere an assistant id is taken, a graph id may stand in for it: it means that graph's
    system assistant;
  * `config.configurable` and `context` are two views of the same static settings (LangGraph
    >= 0.6 prefers `context`): giving one fills the other, giving both is an error;
  * a change (`update`) writes a new version and makes it the latest; `set_latest` moves back.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from langchain_core.runnables import RunnableConfig

from agentserver.errors import BadRequest, GraphLoadError, InvalidInput, NotFound
from agentserver.graphs import GraphRegistry
from agentserver.storage.base import AssistantQuery, Record, Storage

DEFAULT_NAME = "Untitled"
SYSTEM_METADATA = {"created_by": "system"}

_BOTH_CONFIGURABLE_AND_CONTEXT = (
    "Cannot specify both config.configurable and context. Prefer setting context alone: it is the "
    "replacement for configurable since LangGraph 0.6."
)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def sync_config_and_context(
    config: dict[str, Any] | None, context: dict[str, Any] | None, *, base_config: dict[str, Any] | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Keep `config.configurable` and `context` in step. Returns (config, context); each is None
    when neither the request nor the rule sets it (the caller keeps the current value)."""
    configurable = (config or {}).get("configurable") if config is not None else None
    if configurable and context:
        raise BadRequest(_BOTH_CONFIGURABLE_AND_CONTEXT)
    if configurable:
        return copy.deepcopy(config), copy.deepcopy(dict(configurable))
    if context:
        out = copy.deepcopy(config if config is not None else (base_config or {}))
        out["configurable"] = copy.deepcopy(context)
        return out, copy.deepcopy(context)
    if config is not None:
        return copy.deepcopy(config), (None if context is None else {})
    return None, (None if context is None else {})


class AssistantService:
    def __init__(self, storage: Storage, graphs: GraphRegistry) -> None:
        self.storage = storage
        self.graphs = graphs

    # ---- identity ------------------------------------------------------------------------------
    def resolve_id(self, assistant_id: str) -> str:
        """A graph id stands for its system assistant; anything else is an assistant id."""
        if assistant_id in self.graphs:
            return self.graphs.system_assistant_id(assistant_id)
        return assistant_id

    def _check_graph(self, graph_id: str) -> None:
        if graph_id not in self.graphs:
            known = ", ".join(self.graphs.graph_ids()) or "none"
            raise InvalidInput(f"graph_id: graph '{graph_id}' not found. Known graphs: {known}")

    async def ensure_system_assistants(self) -> None:
        """Create the system assistant of every graph that does not have one yet."""
        for graph_id in self.graphs.graph_ids():
            await self.storage.assistant_create(
                {
                    "assistant_id": self.graphs.system_assistant_id(graph_id),
                    "graph_id": graph_id,
                    "config": {},
                    "context": {},
                    "metadata": dict(SYSTEM_METADATA),
                    "name": graph_id,
                    "description": self.graphs.description(graph_id),
                },
                if_exists="do_nothing",
            )

    # ---- CRUD ----------------------------------------------------------------------------------
    async def get(self, assistant_id: str) -> Record:
        """The assistant (its latest version); NotFound if missing."""
        resolved = self.resolve_id(assistant_id)
        assistant = await self.storage.assistant_get(resolved)
        if assistant is None:
            raise NotFound(f"Assistant '{assistant_id}' not found")
        return assistant

    async def create(
        self,
        *,
        graph_id: str,
        assistant_id: str | None = None,
        config: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        description: str | None = None,
        if_exists: str = "raise",
    ) -> Record:
        self._check_graph(graph_id)
        if assistant_id is not None and not is_uuid(assistant_id):
            raise InvalidInput("assistant_id: must be a UUID")
        config, context = sync_config_and_context(config, context)
        record = {
            "assistant_id": str(uuid.UUID(assistant_id)) if assistant_id else str(uuid.uuid4()),
            "graph_id": graph_id,
            "config": config or {},
            "context": context or {},
            "metadata": dict(metadata or {}),
            "name": name or DEFAULT_NAME,
            "description": description,
        }
        return await self.storage.assistant_create(record, if_exists=if_exists)

    async def update(
        self,
        assistant_id: str,
        *,
        graph_id: str | None = None,
        config: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        description: str | None = None,
    ) -> Record:
        """Write a new version with the given changes applied (metadata is merged)."""
        current = await self.get(assistant_id)
        if graph_id is not None:
            self._check_graph(graph_id)
        config, context = sync_config_and_context(config, context, base_config=current.get("config"))
        changes: Record = {}
        for key, value in (
            ("graph_id", graph_id),
            ("config", config),
            ("context", context),
            ("metadata", metadata),
            ("name", name),
            ("description", description),
        ):
            if value is not None:
                changes[key] = value
        return await self.storage.assistant_update(current["assistant_id"], changes)

    async def delete(self, assistant_id: str) -> str:
        """Delete the assistant and all its versions; returns its id. NotFound if missing."""
        resolved = self.resolve_id(assistant_id)
        if not await self.storage.assistant_delete(resolved):
            raise NotFound(f"Assistant '{assistant_id}' not found")
        return resolved

    async def search(
        self,
        *,
        graph_id: str | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> tuple[list[Record], int]:
        query = AssistantQuery(
            graph_id=graph_id,
            name=name,
            metadata=metadata or None,
            limit=limit,
            offset=offset,
            sort_by=sort_by or "created_at",
            sort_order=sort_order or "desc",  # type: ignore[arg-type]
        )
        return await self.storage.assistant_search(query)

    async def count(
        self, *, graph_id: str | None = None, name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> int:
        _, total = await self.storage.assistant_search(
            AssistantQuery(graph_id=graph_id, name=name, metadata=metadata or None, limit=1, offset=0)
        )
        return total

    async def versions(
        self, assistant_id: str, *, metadata: dict[str, Any] | None = None, limit: int = 10, offset: int = 0
    ) -> list[Record]:
        current = await self.get(assistant_id)
        return await self.storage.assistant_versions(
            current["assistant_id"], metadata=metadata or None, limit=limit, offset=offset
        )

    async def set_latest(self, assistant_id: str, version: int) -> Record:
        current = await self.get(assistant_id)
        return await self.storage.assistant_set_latest(current["assistant_id"], version)

    # ---- graph introspection -------------------------------------------------------------------
    def _graph_config(self, assistant: Record) -> RunnableConfig:
        stored = assistant.get("config")
        config: RunnableConfig = copy.deepcopy(stored) if stored else {}
        configurable = dict(config.get("configurable") or {})
        configurable.setdefault("assistant_id", assistant["assistant_id"])
        configurable.setdefault("graph_id", assistant["graph_id"])
        config["configurable"] = configurable
        return config

    async def graph(self, assistant_id: str, *, xray: bool | int = False) -> dict[str, Any]:
        """The drawable graph of the assistant (nodes and edges)."""
        assistant = await self.get(assistant_id)
        try:
            return await self.graphs.graph_json(
                assistant["graph_id"], self._graph_config(assistant), xray=xray, store=self.storage.store
            )
        except GraphLoadError as exc:
            raise InvalidInput(str(exc)) from exc

    async def schemas(self, assistant_id: str) -> dict[str, Any]:
        assistant = await self.get(assistant_id)
        try:
            return await self.graphs.schemas(
                assistant["graph_id"], self._graph_config(assistant), store=self.storage.store
            )
        except GraphLoadError as exc:
            raise InvalidInput(str(exc)) from exc

    async def subgraphs(
        self, assistant_id: str, *, namespace: str | None = None, recurse: bool = False
    ) -> dict[str, dict[str, Any]]:
        """namespace -> schemas of the graph's subgraphs (only `namespace` when given)."""
        assistant = await self.get(assistant_id)
        try:
            found = await self.graphs.subgraphs(
                assistant["graph_id"],
                self._graph_config(assistant),
                namespace=namespace,
                recurse=recurse,
                store=self.storage.store,
            )
        except GraphLoadError as exc:
            raise InvalidInput(str(exc)) from exc
        # Subgraph entries describe a namespace, not a graph of langgraph.json: no graph_id.
        return {ns: {k: v for k, v in schema.items() if k != "graph_id"} for ns, schema in found.items()}
