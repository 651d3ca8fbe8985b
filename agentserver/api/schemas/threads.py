"""Request bodies and response shapes of the thread endpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, Field, ValidationError, WithJsonSchema, field_validator

from agentserver.api.schemas import MAX_OFFSET, MAX_TTL_MINUTES, RequestBody, WireModel, selection_of

ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
ThreadSortBy = Literal["thread_id", "status", "created_at", "updated_at", "state_updated_at"]
ThreadField = Literal[
    "thread_id",
    "created_at",
    "updated_at",
    "state_updated_at",
    "metadata",
    "config",
    "context",
    "status",
    "values",
    "interrupts",
    "error",
]
SortOrder = Literal["asc", "desc"]
TTLStrategy = Literal["delete", "keep_latest"]


def _state_values(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return value
    raise ValueError("must be an object, a list or null")


StateValues = Annotated[
    Any,
    AfterValidator(_state_values),
    WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "array"}, {"type": "null"}]}),
]

MAX_EXTRACT_PATHS = 10


class ThreadTTL(RequestBody):
    """When the thread is swept: `ttl` minutes after it was last set."""

    strategy: TTLStrategy = Field(
        default="delete", description="delete: remove the thread; keep_latest: keep only its latest checkpoint."
    )
    ttl: float = Field(gt=0, le=MAX_TTL_MINUTES, description="Minutes from now until the thread is swept.")


def _ttl_from_number(value: Any) -> Any:
    # The SDK sends {"ttl": n, "strategy": "delete"}; a bare number of minutes is accepted too.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"ttl": value, "strategy": "delete"}
    return value


class CheckpointConfig(RequestBody):
    """Points at a checkpoint (or, without checkpoint_id, at a namespace's latest one)."""

    thread_id: str | None = None
    checkpoint_ns: str = ""
    checkpoint_id: str | None = None
    checkpoint_map: dict[str, Any] | None = None


class StateCommand(RequestBody):
    """A command applied as a state update: `update` values and/or `goto` nodes."""

    update: Any = None
    resume: Any = None
    goto: Any = None


class SuperstepUpdate(RequestBody):
    values: StateValues = None
    command: StateCommand | None = None
    as_node: str


class Superstep(RequestBody):
    updates: list[SuperstepUpdate] = Field(min_length=1)


class ThreadCreate(RequestBody):
    thread_id: UUID | None = Field(default=None, description="The thread id; a new UUIDv7 if omitted.")
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    ttl: ThreadTTL | None = Field(default=None, description="Minutes, or {strategy, ttl}.")
    supersteps: list[Superstep] | None = Field(
        default=None,
        description="State updates applied in order after creation; needs metadata.graph_id.",
    )

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return _ttl_from_number(v)


class ThreadPatch(RequestBody):
    metadata: dict[str, Any] | None = Field(default=None, description="Merged into the current metadata.")
    ttl: ThreadTTL | None = None

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return _ttl_from_number(v)


class ThreadSearch(RequestBody):
    ids: list[UUID] | None = None
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: ThreadStatus | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort_by: ThreadSortBy | None = None
    sort_order: SortOrder | None = None
    select: list[ThreadField] | None = None
    extract: dict[str, str] | None = Field(
        default=None,
        description="alias -> path into the thread (`values.messages[-1].content`); "
        f"results in `extracted`. At most {MAX_EXTRACT_PATHS} paths.",
    )

    @field_validator("extract")
    @classmethod
    def _extract(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and len(v) > MAX_EXTRACT_PATHS:
            raise ValueError(f"at most {MAX_EXTRACT_PATHS} paths")
        return v


class ThreadCount(RequestBody):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: ThreadStatus | None = None


class ThreadPrune(RequestBody):
    thread_ids: list[str]
    strategy: Literal["delete", "keep_latest"] = "delete"


class ThreadStateAtCheckpoint(RequestBody):
    checkpoint: CheckpointConfig
    subgraphs: bool = False
    select: list[str] | None = None


class ThreadStateUpdate(RequestBody):
    values: StateValues = None
    as_node: str | None = None
    checkpoint: CheckpointConfig | None = None
    checkpoint_id: str | None = None


def _checkpoint_ref(value: Any) -> Any:
    """A checkpoint id, a checkpoint object, or a config (`{"configurable": {checkpoint}}`)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and "configurable" in value:
        if not isinstance(value["configurable"], dict):
            raise ValueError("configurable: must be an object")
        value = value["configurable"]
    if isinstance(value, dict):
        try:
            return CheckpointConfig.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"{where}: {err['msg']}") from None
    raise ValueError("must be a checkpoint id, a checkpoint object or a config")


CheckpointRef = Annotated[
    Any,
    AfterValidator(_checkpoint_ref),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}]}),
]


class ThreadHistory(RequestBody):
    limit: int = Field(default=10, ge=1, le=1000)
    before: CheckpointRef = Field(
        default=None,
        description="A checkpoint id, a checkpoint, or a config (`configurable.checkpoint_id`): states before it.",
    )
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointConfig | None = None
    select: list[str] | None = None


# ---- documented response shapes ---------------------------------------------------------


class Thread(WireModel):
    thread_id: str
    created_at: str
    updated_at: str
    state_updated_at: str | None = None
    metadata: dict[str, Any]
    config: dict[str, Any] | None = None
    status: ThreadStatus
    values: Any = None
    interrupts: dict[str, Any] | None = None
    error: Any = None


class Checkpoint(WireModel):
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str | None = None
    checkpoint_map: dict[str, Any] | None = None


class ThreadTask(WireModel):
    id: str
    name: str
    path: list[Any] | None = None
    error: str | None = None
    interrupts: list[dict[str, Any]] = []
    checkpoint: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    result: Any = None


class ThreadState(WireModel):
    values: Any
    next: list[str]
    tasks: list[ThreadTask]
    metadata: dict[str, Any] | None = None
    created_at: str | None = None
    checkpoint: Checkpoint | None = None
    parent_checkpoint: Checkpoint | None = None
    interrupts: list[dict[str, Any]] = []


class ThreadStateUpdated(WireModel):
    checkpoint: Checkpoint


class PruneResult(WireModel):
    pruned_count: int


@selection_of(Thread)
class ThreadSelection(WireModel):
    """A thread projected to the fields a search `select`ed."""

    thread_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    state_updated_at: str | None = None
    metadata: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    status: ThreadStatus | None = None
    values: Any | None = None
    interrupts: dict[str, Any] | None = None
    error: Any | None = None
