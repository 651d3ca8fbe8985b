"""Request bodies and response shapes of the assistant endpoints."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from agentserver.api.schemas import MAX_INT32, MAX_OFFSET, RequestBody, WireModel, selection_of

AssistantSortBy = Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"]
AssistantField = Literal[
    "assistant_id",
    "graph_id",
    "name",
    "description",
    "config",
    "context",
    "created_at",
    "updated_at",
    "metadata",
    "version",
]
SortOrder = Literal["asc", "desc"]


class AssistantCreate(RequestBody):
    """Create an assistant: a versioned configuration of a graph."""

    graph_id: str = Field(description="The graph the assistant runs (a key of langgraph.json `graphs`).")
    assistant_id: UUID | None = Field(default=None, description="The assistant id; a random UUID if omitted.")
    config: dict[str, Any] | None = Field(default=None, description="RunnableConfig for the graph.")
    context: dict[str, Any] | None = Field(default=None, description="Static context for the graph.")
    metadata: dict[str, Any] | None = Field(default=None, description="Metadata of the assistant.")
    if_exists: Literal["raise", "do_nothing"] = Field(
        default="raise", description="On an existing id: raise (409) or return the existing assistant."
    )
    name: str | None = Field(default=None, description="Name of the assistant (default 'Untitled').")
    description: str | None = Field(default=None, description="Description of the assistant.")


class AssistantPatch(RequestBody):
    """Change an assistant: writes a new version and makes it the latest."""

    graph_id: str | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = Field(default=None, description="Merged into the current metadata.")
    name: str | None = None
    description: str | None = None


class AssistantSearch(RequestBody):
    metadata: dict[str, Any] | None = Field(default=None, description="Exact match on each key.")
    graph_id: str | None = None
    name: str | None = Field(default=None, description="Case-insensitive substring of the name.")
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort_by: AssistantSortBy | None = None
    sort_order: SortOrder | None = None
    select: list[AssistantField] | None = Field(default=None, description="Fields to return.")


class AssistantCount(RequestBody):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = None
    name: str | None = None


class AssistantVersionsSearch(RequestBody):
    metadata: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class AssistantSetLatest(RequestBody):
    version: int = Field(ge=1, le=MAX_INT32, description="The version to make current.")


class AssistantVersion(WireModel):
    assistant_id: str
    graph_id: str
    config: dict[str, Any]
    context: dict[str, Any] | None = None
    metadata: dict[str, Any]
    name: str | None = None
    description: str | None = None
    version: int
    created_at: str


class Assistant(AssistantVersion):
    updated_at: str


class GraphSchemas(WireModel):
    graph_id: str
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    state_schema: dict[str, Any] | None = None
    config_schema: dict[str, Any] | None = None
    context_schema: dict[str, Any] | None = None


class DrawableGraph(WireModel):
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]


@selection_of(Assistant)
class AssistantSelection(WireModel):
    """An assistant projected to the fields a search `select`ed."""

    assistant_id: str | None = None
    graph_id: str | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    name: str | None = None
    description: str | None = None
    version: int | None = None
    created_at: str | None = None
    updated_at: str | None = None
