"""Rules both storage backends must agree on, written once and pinned by the storage
conformance suite (tests of both implementations). The backends' SQL follows these; where a
rule is computed in Python, the backends call these functions."""

from __future__ import annotations

from typing import Any, Literal

from agentserver.storage.base import Record

# The 409 of multitask_strategy="reject" when the thread has a run in flight.
REJECT_MESSAGE = "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."

ThreadStatus = Literal["idle", "busy", "interrupted", "error"]


def retries_exhausted_error(run_id: str, attempts: int, max_attempts: int) -> dict[str, str]:
    """The stored error (and `error` event) of a run whose worker was lost or shut down once too
    often: the same on both backends and in the worker."""
    return {
        "error": "RetriesExhausted",
        "message": (
            f"Run {run_id} was interrupted {attempts} time(s) (its worker was lost or shut down); "
            f"giving up after {max_attempts} attempt(s)"
        ),
    }


def thread_graph_metadata(run: Record, thread: Record | None) -> dict[str, Any]:
    """`graph_id` / `assistant_id` a run adds to its thread's metadata. `graph_id`: the run's own
    (its record, then its config's `configurable`), then what the thread already says;
    `assistant_id`: the run's, then the thread's."""
    out: dict[str, Any] = {}
    thread_meta = (thread or {}).get("metadata") or {}
    configurable = (((run.get("kwargs") or {}).get("config") or {}).get("configurable")) or {}
    graph_id = run.get("graph_id") or configurable.get("graph_id") or thread_meta.get("graph_id")
    if graph_id is not None:
        out["graph_id"] = graph_id
    assistant_id = run.get("assistant_id") or thread_meta.get("assistant_id")
    if assistant_id is not None:
        out["assistant_id"] = assistant_id
    return out


def settled_status(other_run_in_flight: bool, resting_status: str) -> str:
    """A thread's status once one of its runs ended: `busy` while another run of it is in
    flight, else the status the ending run leaves it in (`idle`, `interrupted` or `error`). The
    thread's values/interrupts are mirrored only when the run's end carries them, its error is
    the run's (None clears it), and its TTL clock restarts."""
    return "busy" if other_run_in_flight else resting_status


__all__ = [
    "REJECT_MESSAGE",
    "ThreadStatus",
    "retries_exhausted_error",
    "settled_status",
    "thread_graph_metadata",
]
