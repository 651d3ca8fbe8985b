"""HTTP routes of the threads resource: records, state, history, copies, pruning."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request
from starlette.responses import Response

from agentserver.api.deps import services
from agentserver.api.responses import JSON, PAGINATED_DOC, error_doc, page, public
from agentserver.api.schemas.threads import (
    PruneResult,
    Thread,
    ThreadCount,
    ThreadCreate,
    ThreadHistory,
    ThreadPatch,
    ThreadPrune,
    ThreadSearch,
    ThreadSelection,
    ThreadState,
    ThreadStateAtCheckpoint,
    ThreadStateUpdate,
    ThreadStateUpdated,
)
from agentserver.services.threads import select_state

router = APIRouter(tags=["Threads"])

_NOT_FOUND = error_doc(404, "Thread not found")
_INVALID = error_doc(422, "Invalid request")
_BAD = error_doc(400, "The graph rejected the request")
_PAGINATED = PAGINATED_DOC
ThreadIdPath = Annotated[str, Path(description="The thread id (a UUID).")]
SelectQuery = Annotated[
    list[str] | None, Query(description="State fields to return; `values.<key>` for one state key.")
]


def _dump(model: Any) -> dict[str, Any] | None:
    return model.model_dump() if model is not None else None


def _thread(record: dict[str, Any], include: set[str] | None = None) -> dict[str, Any]:
    out = public(record) or {}
    if include and "ttl" in include:
        ttl = record.get("ttl")
        out["ttl"] = {**ttl, "expires_at": record.get("expires_at")} if ttl else None
    return out


@router.post(
    "/threads",
    summary="Create a thread",
    response_model=Thread,
    responses={**error_doc(409, "The thread exists (if_exists=raise)"), **_BAD, **_INVALID},
)
async def create_thread(request: Request, body: Annotated[ThreadCreate | None, Body()] = None) -> JSON:
    body = body or ThreadCreate()
    thread = await services(request).threads.create(
        thread_id=str(body.thread_id) if body.thread_id else None,
        metadata=body.metadata,
        if_exists=body.if_exists,
        ttl=_dump(body.ttl),
        supersteps=[s.model_dump() for s in body.supersteps] if body.supersteps else None,
    )
    return JSON(_thread(thread))


@router.post(
    "/threads/search",
    summary="Search threads",
    response_model=list[Thread | ThreadSelection],  # with `select`: only the selected fields
    responses={200: _PAGINATED, **_INVALID},
)
async def search_threads(request: Request, body: Annotated[ThreadSearch | None, Body()] = None) -> JSON:
    body = body or ThreadSearch()
    items, total = await services(request).threads.search(
        ids=[str(i) for i in body.ids] if body.ids is not None else None,
        metadata=body.metadata,
        values=body.values,
        status=body.status,
        limit=body.limit,
        offset=body.offset,
        sort_by=body.sort_by,
        sort_order=body.sort_order,
        extract=body.extract,
    )
    select: list[str] | None = list(body.select) if body.select else None
    if select and body.extract:
        select.append("extracted")
    return page(items, total=total, offset=body.offset, limit=body.limit, select=select)


@router.post("/threads/count", summary="Count threads", response_model=int, responses=_INVALID)
async def count_threads(request: Request, body: Annotated[ThreadCount | None, Body()] = None) -> JSON:
    body = body or ThreadCount()
    return JSON(await services(request).threads.count(metadata=body.metadata, values=body.values, status=body.status))


@router.post(
    "/threads/prune",
    summary="Delete threads, or prune them to their latest checkpoint",
    response_model=PruneResult,
    responses=_INVALID,
)
async def prune_threads(request: Request, body: ThreadPrune) -> JSON:
    pruned = await services(request).threads.prune(body.thread_ids, strategy=body.strategy)
    return JSON({"pruned_count": pruned})


@router.get("/threads/{thread_id}", summary="Get a thread", response_model=Thread, responses=_NOT_FOUND)
async def get_thread(
    request: Request,
    thread_id: ThreadIdPath,
    include: Annotated[list[str] | None, Query(description="Extra fields: `ttl`.")] = None,
) -> JSON:
    fields = {f.strip() for item in include or () for f in item.split(",") if f.strip()}
    return JSON(_thread(await services(request).threads.get(thread_id), fields))


@router.patch(
    "/threads/{thread_id}",
    summary="Update a thread's metadata or TTL",
    response_model=Thread,
    responses={204: {"description": "Updated (Prefer: return=minimal)"}, **_NOT_FOUND, **_INVALID},
)
async def patch_thread(
    request: Request,
    thread_id: ThreadIdPath,
    body: Annotated[ThreadPatch | None, Body()] = None,
    prefer: Annotated[str | None, Header(description="`return=minimal` answers 204 without a body.")] = None,
) -> Response:
    body = body or ThreadPatch()
    thread = await services(request).threads.update(thread_id, metadata=body.metadata, ttl=_dump(body.ttl))
    if prefer and "return=minimal" in prefer.replace(" ", "").lower():
        return Response(status_code=204)
    return JSON(_thread(thread))


@router.delete(
    "/threads/{thread_id}",
    status_code=204,
    summary="Delete a thread, its runs and its checkpoints",
    response_class=Response,
    responses=_NOT_FOUND,
)
async def delete_thread(request: Request, thread_id: ThreadIdPath) -> Response:
    await services(request).threads.delete(thread_id)
    return Response(status_code=204)


@router.post(
    "/threads/{thread_id}/copy",
    summary="Copy a thread (metadata, state and checkpoints) to a new thread",
    response_model=Thread,
    responses=_NOT_FOUND,
)
async def copy_thread(request: Request, thread_id: ThreadIdPath) -> JSON:
    return JSON(_thread(await services(request).threads.copy(thread_id)))


@router.get(
    "/threads/{thread_id}/state",
    summary="Get a thread's current state",
    response_model=ThreadState,
    responses={**_NOT_FOUND, **_BAD},
)
async def get_state(
    request: Request, thread_id: ThreadIdPath, subgraphs: bool = False, select: SelectQuery = None
) -> JSON:
    state = await services(request).threads.get_state(thread_id, subgraphs=subgraphs)
    return JSON(select_state(state, select))


@router.post(
    "/threads/{thread_id}/state",
    summary="Update a thread's state",
    response_model=ThreadStateUpdated,
    responses={**_NOT_FOUND, **_BAD, **_INVALID},
)
async def update_state(request: Request, thread_id: ThreadIdPath, body: ThreadStateUpdate) -> JSON:
    checkpoint = _dump(body.checkpoint)
    if body.checkpoint_id:
        checkpoint = {**(checkpoint or {}), "checkpoint_id": body.checkpoint_id}
    result = await services(request).threads.update_state(
        thread_id, values=body.values, as_node=body.as_node, checkpoint=checkpoint
    )
    return JSON(result)


@router.post(
    "/threads/{thread_id}/state/checkpoint",
    summary="Get a thread's state at a checkpoint",
    response_model=ThreadState,
    responses={**_NOT_FOUND, **_BAD, **_INVALID},
)
async def get_state_at_checkpoint(
    request: Request, thread_id: ThreadIdPath, body: ThreadStateAtCheckpoint, subgraphs: bool = False
) -> JSON:
    state = await services(request).threads.get_state(
        thread_id, checkpoint=_dump(body.checkpoint), subgraphs=body.subgraphs or subgraphs
    )
    return JSON(select_state(state, body.select))


@router.get(
    "/threads/{thread_id}/state/{checkpoint_id}",
    summary="Get a thread's state at a checkpoint id",
    response_model=ThreadState,
    responses={**_NOT_FOUND, **_BAD},
)
async def get_state_at(
    request: Request,
    thread_id: ThreadIdPath,
    checkpoint_id: str,
    subgraphs: bool = False,
    select: SelectQuery = None,
) -> JSON:
    state = await services(request).threads.get_state(
        thread_id, checkpoint={"checkpoint_id": checkpoint_id}, subgraphs=subgraphs
    )
    return JSON(select_state(state, select))


@router.get(
    "/threads/{thread_id}/history",
    summary="Get a thread's past states, newest first",
    response_model=list[ThreadState],
    responses={**_NOT_FOUND, **_BAD, **_INVALID},
)
async def get_history(
    request: Request,
    thread_id: ThreadIdPath,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    before: Annotated[str | None, Query(description="A checkpoint id: states before it.")] = None,
) -> JSON:
    states = await services(request).threads.history(thread_id, limit=limit, before=before)
    return JSON(states)


@router.post(
    "/threads/{thread_id}/history",
    summary="Search a thread's past states, newest first",
    response_model=list[ThreadState],
    responses={**_NOT_FOUND, **_BAD, **_INVALID},
)
async def post_history(
    request: Request, thread_id: ThreadIdPath, body: Annotated[ThreadHistory | None, Body()] = None
) -> JSON:
    body = body or ThreadHistory()
    before = body.before if isinstance(body.before, str) or body.before is None else body.before.model_dump()
    states = await services(request).threads.history(
        thread_id,
        limit=body.limit,
        before=before,
        metadata=body.metadata,
        checkpoint=_dump(body.checkpoint),
    )
    return JSON([select_state(s, body.select) for s in states])
