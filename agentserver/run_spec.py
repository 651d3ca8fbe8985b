"""What a run asks for, as the run service stores it and the worker executes it.

`RunSpec` is the typed form of a run record's `kwargs`: the run service builds one when it
creates a run and stores `spec.to_json()`; the worker, the executor, the webhook and the API
(`stream_resumable`) read `RunSpec.from_json(run["kwargs"])`. Storage keeps it as opaque JSON
(the keys are unchanged, so existing databases and runs in flight keep working).

It lives at the top of the package, beside neither side: the services (which write it) and
the worker and executor (which read it) both import it without reaching up a layer, and the
storage port stays ignorant of what a run asks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunSpec"]

_DEFAULT_MODES = ("values",)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run's request, resolved (assistant config merged, server keys added). Attribute
    names are the stored JSON keys."""

    # The RunnableConfig the graph runs with; `configurable` carries run_id, thread_id,
    # graph_id, assistant_id (and checkpoint_id / checkpoint_ns for a fork).
    config: Mapping[str, Any] = field(default_factory=dict)
    input: Any = None
    command: Mapping[str, Any] | None = None  # the wire's {"resume", "update", "goto"}
    context: Mapping[str, Any] | None = None
    stream_mode: Sequence[str] = _DEFAULT_MODES
    subgraphs: bool = False  # stream subgraph events (`stream_subgraphs`)
    interrupt_before: Sequence[str] | str | None = None
    interrupt_after: Sequence[str] | str | None = None
    durability: str = "async"  # "sync" | "async" | "exit"
    checkpoint_id: str | None = None  # the fork point asked for, if any
    webhook: str | None = None
    feedback_keys: Sequence[str] | None = None
    temporary: bool = False  # stateless with on_completion=delete: the thread goes at the end
    resumable: bool = False  # `stream_resumable`: events keep their ids for Last-Event-ID
    on_disconnect: str = "continue"  # "cancel" | "continue"

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RunSpec:
        """From a run record's `kwargs`. Tolerant: missing keys take their defaults, a single
        stream mode may be a string, `stream_subgraphs` is read for `subgraphs`, a null
        durability is "async"; unknown keys are ignored."""
        data = data or {}
        modes = data.get("stream_mode") or _DEFAULT_MODES
        subgraphs = data.get("subgraphs")
        if subgraphs is None:
            subgraphs = data.get("stream_subgraphs", False)
        return cls(
            config=data.get("config") or {},
            input=data.get("input"),
            command=data.get("command"),
            context=data.get("context"),
            stream_mode=(modes,) if isinstance(modes, str) else tuple(modes),
            subgraphs=bool(subgraphs),
            interrupt_before=data.get("interrupt_before"),
            interrupt_after=data.get("interrupt_after"),
            durability=data.get("durability") or "async",
            checkpoint_id=data.get("checkpoint_id"),
            webhook=data.get("webhook"),
            feedback_keys=data.get("feedback_keys"),
            temporary=bool(data.get("temporary")),
            resumable=bool(data.get("resumable")),
            on_disconnect=data.get("on_disconnect") or "continue",
        )

    def to_json(self) -> dict[str, Any]:
        """The stored `kwargs` (the keys runs have always been stored with)."""
        return {
            "input": self.input,
            "command": self.command,
            "config": self.config,
            "context": self.context,
            "stream_mode": list(self.stream_mode),
            "interrupt_before": self.interrupt_before,
            "interrupt_after": self.interrupt_after,
            "webhook": self.webhook,
            "feedback_keys": self.feedback_keys,
            "temporary": self.temporary,
            "subgraphs": self.subgraphs,
            "resumable": self.resumable,
            "durability": self.durability,
            "on_disconnect": self.on_disconnect,
            "checkpoint_id": self.checkpoint_id,
        }
