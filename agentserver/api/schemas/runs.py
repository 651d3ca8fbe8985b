"""Request bodies of the run endpoints (WIRE.md "Creating runs")."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from agentserver.api.schemas import MAX_DELAY_SECONDS, RequestBody

StreamMode = Literal[
    "values",
    "updates",
    "messages",
    "messages-tuple",
    "events",
    "debug",
    "custom",
    "tasks",
    "checkpoints",
]
MultitaskStrategy = Literal["reject", "interrupt", "rollback", "enqueue"]


def _default_stream_mode() -> list[StreamMode]:
    return ["values"]


class CheckpointRef(RequestBody):
    thread_id: str | None = None
    checkpoint_ns: str = ""
    checkpoint_id: str | None = None
    checkpoint_map: dict[str, Any] | None = None


class Command(RequestBody):
    resume: Any = None
    update: Any = None
    goto: Any = None


class RunCreate(RequestBody):
    """Create a run on a thread (or on a new temporary thread for stateless runs)."""

    assistant_id: str = Field(description="Assistant id, or a graph id (its system assistant).")
    input: Any = None
    command: Command | None = None
    checkpoint: CheckpointRef | None = None
    checkpoint_id: str | None = None
    metadata: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    webhook: str | None = None
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    stream_mode: StreamMode | list[StreamMode] = Field(default_factory=_default_stream_mode)
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    feedback_keys: list[str] | None = None
    on_disconnect: Literal["cancel", "continue"] = "continue"
    on_completion: Literal["delete", "keep"] | None = None
    multitask_strategy: MultitaskStrategy = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    after_seconds: float | None = Field(default=None, ge=0, le=MAX_DELAY_SECONDS)
    durability: Literal["sync", "async", "exit"] | None = None
    checkpoint_during: bool | None = None

    @field_validator("stream_mode", mode="before")
    @classmethod
    def _known_modes(cls, v):
        # name the unknown mode (pydantic's union error lists the choices, not the culprit)
        modes = [v] if isinstance(v, str) else v if isinstance(v, list) else []
        allowed = get_args(StreamMode)
        unknown = [m for m in modes if isinstance(m, str) and m not in allowed]
        if unknown:
            raise ValueError(f"unknown stream mode {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
        return v

    @field_validator("stream_mode", mode="after")
    @classmethod
    def _modes(cls, v: str | list[str]) -> list[str]:
        modes = [v] if isinstance(v, str) else list(v)
        seen: list[str] = []
        for m in modes:
            if m not in seen:
                seen.append(m)
        return seen or ["values"]

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, v):
        if v is not None and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("webhook must be an http(s) URL")
        return v


class RunCancelMany(RequestBody):
    thread_id: str | None = None
    run_ids: list[str] | None = None
    status: Literal["pending", "running", "all"] | None = None
