"""Run endpoints: background, /stream, /wait, join, cancel, thread streams, stateless runs."""

from __future__ import annotations

import asyncio
from typing import Annotated, AsyncIterator, Literal

import structlog
from fastapi import APIRouter, Body, Header, Query, Request
from starlette.responses import Response, StreamingResponse

from agentserver.api.deps import services
from agentserver.api.responses import JSON, public
from agentserver.api.schemas.runs import RunCancelMany, RunCreate
from agentserver.api.sse import HEARTBEAT, frame, frame_json, keepalive_json, sse_response
from agentserver.errors import Conflict, InvalidInput
from agentserver.services.runs import CreatedRun, RunService

log = structlog.get_logger(__name__)

router = APIRouter(tags=["Thread Runs"])
stateless = APIRouter(tags=["Stateless Runs"])


def _paths(created: CreatedRun) -> tuple[str, str]:
    run_id = created.run["run_id"]
    if created.stateless:
        return f"/runs/{run_id}", f"/runs/{run_id}"
    base = f"/threads/{created.thread_id}/runs/{run_id}"
    return base, base


def _modes(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(p for p in v.split(",") if p)
    return out or None


async def _create(request: Request, thread_id: str | None, body: RunCreate) -> tuple[RunService, CreatedRun]:
    svc = services(request).runs
    return svc, await svc.create(thread_id, body)


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
    except Conflict:
        pass  # the run ended meanwhile
    except Exception as exc:  # noqa: BLE001 - nobody is left to tell; keep a trace
        log.warning("cancel on disconnect failed", run_id=run_id, error=repr(exc))


def _stream_response(svc: RunService, created: CreatedRun, body: RunCreate) -> StreamingResponse:
    run = created.run
    content_location, base = _paths(created)
    first = frame_json("metadata", {"run_id": run["run_id"], "attempt": max(1, run.get("attempt") or 1)},
                       "0" if body.stream_resumable else None)
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
async def join_run(request: Request, thread_id: str, run_id: str) -> StreamingResponse:
    svc = services(request).runs
    await svc.get(thread_id, run_id)
    result = asyncio.ensure_future(svc.wait_result(run_id, thread_id))

    async def content() -> AsyncIterator[bytes]:
        try:
            async for chunk in keepalive_json(result, svc.settings.stream_heartbeat_secs):
                yield chunk
        finally:
            result.cancel()

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
    run = await svc.get(thread_id, run_id)
    resumable = bool(run["kwargs"].get("resumable"))
    after = (last_event_id if resumable else None) if last_event_id is not None else None
    if after == "-1":
        after = "0"
    return sse_response(
        _run_events(svc, run_id, thread_id, after=after, resumable=resumable, modes=_modes(stream_mode),
                    cancel_on_disconnect=cancel_on_disconnect)
    )


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", summary="Cancel a run")
async def cancel_run(
    request: Request,
    thread_id: str,
    run_id: str,
    wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
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
) -> StreamingResponse:
    svc = services(request).runs
    requested = _modes((stream_modes or []) + (stream_mode or [])) or ["run_modes"]
    # thread stream modes of the SDK: run_modes (every event of the runs), lifecycle (run
    # boundaries only), state_update (values); plain run stream modes filter the runs' events.
    # Every run's end is announced with a `run_done` metadata frame.
    run_modes = [m for m in requested if m not in ("run_modes", "lifecycle", "state_update")]
    if "state_update" in requested:
        run_modes.append("values")
    everything = "run_modes" in requested
    await svc.require_thread(thread_id)

    async def body() -> AsyncIterator[bytes]:
        async for run_id, ev in svc.join_thread(thread_id, modes=None if everything else run_modes):
            if ev is not None:
                if everything or run_modes:
                    yield frame(ev.event, ev.data)
            elif run_id:
                yield frame_json("metadata", {"status": "run_done", "run_id": run_id})
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
        created = await svc.create(None, item)
        out.append(public(created.run))
    return JSON(out)


@stateless.post("/runs/cancel", status_code=204, summary="Cancel runs in bulk")
async def cancel_many(request: Request, body: RunCancelMany) -> Response:
    if not body.run_ids and not body.status:
        raise InvalidInput("Provide run_ids (with thread_id) or status")
    await services(request).runs.cancel_many(thread_id=body.thread_id, run_ids=body.run_ids, status=body.status)
    return Response(status_code=204)


@stateless.get("/runs/{run_id}", summary="Get a stateless run")
async def get_stateless(request: Request, run_id: str) -> JSON:
    return JSON(public(await services(request).runs.get(None, run_id)))


@stateless.get("/runs/{run_id}/stream", summary="Join a stateless run's stream (SSE)")
async def join_stateless_stream(
    request: Request,
    run_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    svc = services(request).runs
    run = await svc.get(None, run_id)
    resumable = bool(run["kwargs"].get("resumable"))
    after = ("0" if last_event_id == "-1" else last_event_id) if resumable else None
    return sse_response(_run_events(svc, run_id, None, after=after, resumable=resumable))


router.include_router(stateless)
