"""Run endpoints: background, /stream, /wait, join, cancel, thread streams, stateless runs."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Literal, get_args

import structlog
from fastapi import APIRouter, Body, Header, Query, Request
from starlette.responses import Response, StreamingResponse

from agentserver.api.deps import services
from agentserver.api.responses import JSON, error_doc, public
from agentserver.api.schemas.runs import RunCancelMany, RunCreate, StreamMode
from agentserver.api.sse import HEARTBEAT, frame, frame_json, keepalive_json, sse_response
from agentserver.broker.common import parse_after
from agentserver.errors import Conflict, InvalidInput, NotFound
from agentserver.run_spec import RunSpec
from agentserver.services.runs import THREAD_REPLAY_ALL, CreatedRun, RunRequest, RunService

log = structlog.get_logger(__name__)

# Every run route may answer these (the stateless routes are included into `router`).
_ERRORS = {
    **error_doc(404, "The thread, run or assistant does not exist"),
    **error_doc(409, "Conflict: the thread is busy (multitask_strategy=reject) or the run is in flight"),
    **error_doc(422, "Invalid request"),
}
router = APIRouter(tags=["Thread Runs"], responses=_ERRORS)
stateless = APIRouter(tags=["Stateless Runs"])


def _paths(created: CreatedRun) -> tuple[str, str]:
    run_id = created.run["run_id"]
    if created.stateless:
        return f"/runs/{run_id}", f"/runs/{run_id}"
    base = f"/threads/{created.thread_id}/runs/{run_id}"
    return base, base


RUN_MODES: tuple[str, ...] = get_args(StreamMode)
# GET /threads/{id}/stream also takes the SDK's thread stream modes.
THREAD_MODES: tuple[str, ...] = ("run_modes", "lifecycle", "state_update", *RUN_MODES)
CancelAction = Literal["interrupt", "rollback"]
# Event ids of a thread stream: `<run_id>:<event id in that run>` (`:0` is the run's metadata
# frame, `:done` its run_done frame); Last-Event-ID `-` (or `-1`) replays the kept runs.
_THREAD_EVENT_ID = re.compile(r"^([0-9a-fA-F-]{36}):(\d+|done)$")


def _modes(values: list[str] | None, allowed: tuple[str, ...] = RUN_MODES) -> list[str] | None:
    """Stream modes from a query: repeated (`?stream_mode=a&stream_mode=b`), comma-separated, or
    JSON (`?stream_mode=["a","b"]`, as @langchain/langgraph-sdk 2 sends them). Unknown modes
    are a 422 that names them, never a silently filtered stream."""
    out: list[str] = []
    for raw in values or ():
        text = raw.strip()
        if text[:1] in ("[", '"'):
            try:
                parsed = json.loads(text)
            except ValueError:
                raise InvalidInput(f"stream_mode: {raw!r} is not valid JSON") from None
            items = [parsed] if isinstance(parsed, str) else parsed
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise InvalidInput(f"stream_mode: {raw!r} must be a mode or a JSON array of modes")
        else:
            items = text.split(",")
        out.extend(i.strip() for i in items if i.strip())
    unknown = [m for m in dict.fromkeys(out) if m not in allowed]
    if unknown:
        raise InvalidInput(
            f"stream_mode: unknown stream mode {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
        )
    return list(dict.fromkeys(out)) or None


def _thread_after(last_event_id: str | None) -> str | tuple[str, str] | None:
    if last_event_id is None or not last_event_id.strip():
        return None
    value = last_event_id.strip()
    if value in ("-", "-1"):
        return THREAD_REPLAY_ALL
    match = _THREAD_EVENT_ID.match(value)
    if match is None:
        raise InvalidInput(
            f"Last-Event-ID {last_event_id!r} is not an event id of this thread stream "
            "(`<run_id>:<n>`, `<run_id>:done`, or `-` for everything still kept)"
        )
    return match.group(1).lower(), match.group(2)


def _metadata_frame(run: dict, event_id: str | None) -> bytes:
    """A run's first frame: `metadata` with its run id and attempt."""
    return frame_json("metadata", {"run_id": run["run_id"], "attempt": max(1, run.get("attempt") or 1)}, event_id)


def run_request(body: RunCreate) -> RunRequest:
    """The service's request for a run body: `checkpoint` (or `checkpoint_id`) gives the fork
    point, the legacy `checkpoint_during=true` means `durability="sync"`."""
    checkpoint = body.checkpoint
    return RunRequest(
        assistant_id=body.assistant_id,
        input=body.input,
        command=body.command.model_dump() if body.command is not None else None,
        checkpoint_id=body.checkpoint_id or (checkpoint.checkpoint_id if checkpoint else None),
        checkpoint_ns=(checkpoint.checkpoint_ns or None) if checkpoint else None,
        metadata=body.metadata,
        config=body.config,
        context=body.context,
        stream_mode=tuple(body.stream_mode),
        stream_subgraphs=body.stream_subgraphs,
        stream_resumable=body.stream_resumable,
        interrupt_before=body.interrupt_before,
        interrupt_after=body.interrupt_after,
        webhook=body.webhook,
        feedback_keys=body.feedback_keys,
        on_disconnect=body.on_disconnect,
        on_completion=body.on_completion,
        multitask_strategy=body.multitask_strategy,
        if_not_exists=body.if_not_exists,
        after_seconds=body.after_seconds,
        durability=body.durability or ("sync" if body.checkpoint_during else None),
    )


async def _create(request: Request, thread_id: str | None, body: RunCreate) -> tuple[RunService, CreatedRun]:
    svc = services(request).runs
    return svc, await svc.create(thread_id, run_request(body))


def _run_events(
    svc: RunService,
    run_id: str,
    thread_id: str | None,
    *,
    after: str | None,
    resumable: bool,
    modes: list[str] | None = None,
    first: bytes | None = None,
    cancel_on_disconnect: bool = False,
) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        finished = False
        try:
            if first is not None:
                yield first
            async for ev in svc.events(run_id, thread_id, after=after, modes=modes):
                if ev is None:
                    yield HEARTBEAT
                else:
                    yield frame(ev.event, ev.data, ev.id if resumable else None)
            finished = True
        finally:
            if not finished and cancel_on_disconnect:
                svc.spawn(_cancel_quietly(svc, thread_id, run_id))

    return body()


async def _cancel_quietly(svc: RunService, thread_id: str | None, run_id: str) -> None:
    """on_disconnect=cancel: the client went away, so does its run."""
    log.info("client disconnected; cancelling its run", run_id=run_id)
    try:
        await svc.cancel(thread_id, run_id, "interrupt")
    except (Conflict, NotFound):
        pass  # the run ended meanwhile
    except Exception as exc:  # noqa: BLE001 - nobody is left to tell; keep a trace
        log.warning("cancel on disconnect failed", run_id=run_id, error=repr(exc))


def _stream_response(svc: RunService, created: CreatedRun, body: RunCreate) -> StreamingResponse:
    run = created.run
    content_location, base = _paths(created)
    first = _metadata_frame(run, "0" if body.stream_resumable else None)
    stream = _run_events(
        svc,
        run["run_id"],
        None if created.stateless else created.thread_id,
        after="0",
        resumable=body.stream_resumable,
        first=first,
        cancel_on_disconnect=body.on_disconnect == "cancel",
    )
    return sse_response(stream, {"Content-Location": content_location, "Location": base + "/stream"})


def _wait_response(svc: RunService, created: CreatedRun, body: RunCreate) -> StreamingResponse:
    run_id = created.run["run_id"]
    content_location, base = _paths(created)
    result = asyncio.ensure_future(svc.wait_result(run_id, created.thread_id))

    async def content() -> AsyncIterator[bytes]:
        finished = False
        try:
            async for chunk in keepalive_json(result, svc.settings.stream_heartbeat_secs):
                yield chunk
            finished = True
        finally:
            if not finished:
                result.cancel()
                if body.on_disconnect == "cancel":
                    svc.spawn(_cancel_quietly(svc, created.thread_id, run_id))

    return StreamingResponse(
        content(),
        media_type="application/json",
        headers={"Content-Location": content_location, "Location": base + "/join"},
    )


# ---- thread runs ---------------------------------------------------------------------------
@router.post("/threads/{thread_id}/runs", summary="Create a background run")
async def create_run(request: Request, thread_id: str, body: RunCreate) -> JSON:
    svc, created = await _create(request, thread_id, body)
    loc, base = _paths(created)
    return JSON(public(created.run), headers={"Content-Location": loc, "Location": base + "/join"})


@router.post("/threads/{thread_id}/runs/stream", summary="Create a run and stream its output (SSE)")
async def create_stream(request: Request, thread_id: str, body: RunCreate) -> StreamingResponse:
    svc, created = await _create(request, thread_id, body)
    return _stream_response(svc, created, body)


@router.post("/threads/{thread_id}/runs/wait", summary="Create a run and wait for its final state")
async def create_wait(request: Request, thread_id: str, body: RunCreate) -> StreamingResponse:
    svc, created = await _create(request, thread_id, body)
    return _wait_response(svc, created, body)


@router.get("/threads/{thread_id}/runs", summary="List the runs of a thread")
async def list_runs(
    request: Request,
    thread_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Literal["pending", "running", "error", "success", "timeout", "interrupted"] | None = None,
    select: Annotated[list[str] | None, Query()] = None,
) -> JSON:
    runs = await services(request).runs.list(thread_id, status=status, limit=limit, offset=offset)
    return JSON([public(r, select) for r in runs])


@router.get("/threads/{thread_id}/runs/{run_id}", summary="Get a run")
async def get_run(request: Request, thread_id: str, run_id: str) -> JSON:
    return JSON(public(await services(request).runs.get(thread_id, run_id)))


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204, summary="Delete a finished run")
async def delete_run(request: Request, thread_id: str, run_id: str) -> Response:
    await services(request).runs.delete(thread_id, run_id)
    return Response(status_code=204)


@router.get("/threads/{thread_id}/runs/{run_id}/join", summary="Wait for a run and return the thread's final state")
async def join_run(
    request: Request, thread_id: str, run_id: str, cancel_on_disconnect: bool = False
) -> StreamingResponse:
    svc = services(request).runs
    await svc.get(thread_id, run_id)
    result = asyncio.ensure_future(svc.wait_result(run_id, thread_id))

    async def content() -> AsyncIterator[bytes]:
        finished = False
        try:
            async for chunk in keepalive_json(result, svc.settings.stream_heartbeat_secs):
                yield chunk
            finished = True
        finally:
            result.cancel()
            if not finished and cancel_on_disconnect:
                svc.spawn(_cancel_quietly(svc, thread_id, run_id))

    return StreamingResponse(content(), media_type="application/json")


@router.get("/threads/{thread_id}/runs/{run_id}/stream", summary="Join a run's stream (SSE)")
async def join_stream(
    request: Request,
    thread_id: str,
    run_id: str,
    stream_mode: Annotated[list[str] | None, Query()] = None,
    cancel_on_disconnect: bool = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    svc = services(request).runs
    modes = _modes(stream_mode)
    run = await svc.get(thread_id, run_id)
    return sse_response(
        _join_events(svc, run, thread_id, last_event_id, modes=modes, cancel_on_disconnect=cancel_on_disconnect)
    )


def _join_events(
    svc: RunService,
    run: dict,
    thread_id: str | None,
    last_event_id: str | None,
    *,
    modes: list[str] | None = None,
    cancel_on_disconnect: bool = False,
) -> AsyncIterator[bytes]:
    """A joined run's stream. Resumable runs replay after `Last-Event-ID`; `-1` replays the
    whole run, starting with its `metadata` frame (id `0`, as in the stream that created it)."""
    resumable = RunSpec.from_json(run["kwargs"]).resumable
    after = ((last_event_id or "").strip() or None) if resumable else None
    if after is not None:
        try:
            parse_after(after)  # here, not once the 200 has gone out
        except InvalidInput:
            raise InvalidInput(f"Last-Event-ID {last_event_id!r} is not an event id of this run's stream") from None
    first = None
    if after == "-1":
        after = "0"
        first = _metadata_frame(run, "0")
    return _run_events(
        svc,
        run["run_id"],
        thread_id,
        after=after,
        resumable=resumable,
        modes=modes,
        first=first,
        cancel_on_disconnect=cancel_on_disconnect,
    )


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", summary="Cancel a run")
async def cancel_run(
    request: Request,
    thread_id: str,
    run_id: str,
    wait: bool = False,
    action: CancelAction = "interrupt",
) -> Response:
    svc = services(request).runs
    await svc.cancel(thread_id, run_id, action)
    if not wait:
        return Response(status_code=202)
    return JSON(await svc.wait_result(run_id, thread_id))


@router.get("/threads/{thread_id}/stream", summary="Stream every run of a thread (SSE)")
async def thread_stream(
    request: Request,
    thread_id: str,
    stream_mode: Annotated[list[str] | None, Query()] = None,
    stream_modes: Annotated[list[str] | None, Query()] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    svc = services(request).runs
    requested = _modes((stream_modes or []) + (stream_mode or []), THREAD_MODES) or ["run_modes"]
    after = _thread_after(last_event_id)
    # thread stream modes of the SDK: run_modes (every event of the runs), lifecycle (run
    # boundaries only), state_update (values); plain run stream modes filter the runs' events.
    # Every run begins with its `metadata` frame and ends with a `run_done` metadata frame.
    run_modes = [m for m in requested if m not in ("run_modes", "lifecycle", "state_update")]
    if "state_update" in requested:
        run_modes.append("values")
    everything = "run_modes" in requested
    await svc.require_thread(thread_id)

    async def body() -> AsyncIterator[bytes]:
        async for item in svc.join_thread(thread_id, modes=None if everything else run_modes, after=after):
            if item[0] == "event":
                _, run, ev = item
                if everything or run_modes:
                    yield frame(ev.event, ev.data, f"{run['run_id']}:{ev.id}")
            elif item[0] == "start":
                run = item[1]
                yield _metadata_frame(run, f"{run['run_id']}:0")
            elif item[0] == "done":
                run = item[1]
                yield frame_json("metadata", {"status": "run_done", "run_id": run["run_id"]}, f"{run['run_id']}:done")
            else:
                yield HEARTBEAT

    return sse_response(body())


# ---- stateless runs ------------------------------------------------------------------------
@stateless.post("/runs", summary="Create a stateless background run")
async def create_stateless(request: Request, body: RunCreate) -> JSON:
    svc, created = await _create(request, None, body)
    loc, base = _paths(created)
    return JSON(public(created.run), headers={"Content-Location": loc})


@stateless.post("/runs/stream", summary="Create a stateless run and stream its output (SSE)")
async def stream_stateless(request: Request, body: RunCreate) -> StreamingResponse:
    svc, created = await _create(request, None, body)
    return _stream_response(svc, created, body)


@stateless.post("/runs/wait", summary="Create a stateless run and wait for its output")
async def wait_stateless(request: Request, body: RunCreate) -> StreamingResponse:
    svc, created = await _create(request, None, body)
    return _wait_response(svc, created, body)


@stateless.post("/runs/batch", summary="Create several stateless background runs")
async def batch_stateless(request: Request, body: Annotated[list[RunCreate], Body()]) -> JSON:
    svc = services(request).runs
    out = []
    for item in body:
        created = await svc.create(None, run_request(item))
        out.append(public(created.run))
    return JSON(out)


@stateless.post("/runs/cancel", status_code=204, summary="Cancel runs in bulk")
async def cancel_many(request: Request, body: RunCancelMany, action: CancelAction = "interrupt") -> Response:
    if not body.run_ids and not body.status:
        raise InvalidInput("Provide run_ids (with thread_id) or status")
    await services(request).runs.cancel_many(
        thread_id=body.thread_id, run_ids=body.run_ids, status=body.status, action=action
    )
    return Response(status_code=204)


@stateless.get("/runs/{run_id}", summary="Get a stateless run")
async def get_stateless(request: Request, run_id: str) -> JSON:
    return JSON(public(await services(request).runs.get(None, run_id)))


@stateless.get("/runs/{run_id}/stream", summary="Join a stateless run's stream (SSE)")
async def join_stateless_stream(
    request: Request,
    run_id: str,
    stream_mode: Annotated[list[str] | None, Query()] = None,
    cancel_on_disconnect: bool = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    svc = services(request).runs
    modes = _modes(stream_mode)
    run = await svc.get(None, run_id)
    return sse_response(
        _join_events(svc, run, None, last_event_id, modes=modes, cancel_on_disconnect=cancel_on_disconnect)
    )


router.include_router(stateless)
