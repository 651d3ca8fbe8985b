"""HTTP routes of the assistants resource. Every `{assistant_id}` may also be a graph id,
meaning that graph's system assistant."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from starlette.responses import Response

from agentserver.api.deps import services
from agentserver.api.responses import JSON, PAGINATED_DOC, error_doc, page, public
from agentserver.api.schemas import MAX_INT32
from agentserver.api.schemas.assistants import (
    Assistant,
    AssistantCount,
    AssistantCreate,
    AssistantPatch,
    AssistantSearch,
    AssistantSelection,
    AssistantSetLatest,
    AssistantVersion,
    AssistantVersionsSearch,
    DrawableGraph,
    GraphSchemas,
)
from agentserver.errors import InvalidInput

router = APIRouter(tags=["Assistants"])

_NOT_FOUND = error_doc(404, "Assistant not found")
_INVALID = error_doc(422, "Invalid request")
_PAGINATED = PAGINATED_DOC
AssistantIdPath = Annotated[str, Path(description="An assistant id, or a graph id (its system assistant).")]


@router.post(
    "/assistants",
    summary="Create an assistant",
    response_model=Assistant,
    responses={**error_doc(409, "The assistant exists (if_exists=raise)"), **_INVALID},
)
async def create_assistant(request: Request, body: AssistantCreate) -> JSON:
    assistant = await services(request).assistants.create(
        graph_id=body.graph_id,
        assistant_id=str(body.assistant_id) if body.assistant_id else None,
        config=body.config,
        context=body.context,
        metadata=body.metadata,
        name=body.name,
        description=body.description,
        if_exists=body.if_exists,
    )
    return JSON(public(assistant))


@router.post(
    "/assistants/search",
    summary="Search assistants",
    response_model=list[Assistant | AssistantSelection],  # with `select`: only the selected fields
    responses={200: _PAGINATED, **_INVALID},
)
async def search_assistants(request: Request, body: Annotated[AssistantSearch | None, Body()] = None) -> JSON:
    body = body or AssistantSearch()
    items, total = await services(request).assistants.search(
        graph_id=body.graph_id,
        name=body.name,
        metadata=body.metadata,
        limit=body.limit,
        offset=body.offset,
        sort_by=body.sort_by,
        sort_order=body.sort_order,
    )
    return page(items, total=total, offset=body.offset, limit=body.limit, select=body.select)


@router.post("/assistants/count", summary="Count assistants", response_model=int, responses=_INVALID)
async def count_assistants(request: Request, body: Annotated[AssistantCount | None, Body()] = None) -> JSON:
    body = body or AssistantCount()
    return JSON(
        await services(request).assistants.count(graph_id=body.graph_id, name=body.name, metadata=body.metadata)
    )


@router.get(
    "/assistants/{assistant_id}",
    summary="Get an assistant",
    response_model=Assistant,
    responses=_NOT_FOUND,
)
async def get_assistant(request: Request, assistant_id: AssistantIdPath) -> JSON:
    return JSON(public(await services(request).assistants.get(assistant_id)))


@router.patch(
    "/assistants/{assistant_id}",
    summary="Update an assistant (writes a new version)",
    response_model=Assistant,
    responses={**_NOT_FOUND, **_INVALID},
)
async def patch_assistant(
    request: Request, assistant_id: AssistantIdPath, body: Annotated[AssistantPatch | None, Body()] = None
) -> JSON:
    body = body or AssistantPatch()
    assistant = await services(request).assistants.update(
        assistant_id,
        graph_id=body.graph_id,
        config=body.config,
        context=body.context,
        metadata=body.metadata,
        name=body.name,
        description=body.description,
    )
    return JSON(public(assistant))


@router.delete(
    "/assistants/{assistant_id}",
    status_code=204,
    summary="Delete an assistant and all its versions",
    response_class=Response,
    responses=_NOT_FOUND,
)
async def delete_assistant(
    request: Request,
    assistant_id: AssistantIdPath,
    delete_threads: Annotated[
        bool, Query(description="Also delete the threads whose metadata.assistant_id is this assistant")
    ] = False,
) -> Response:
    svc = services(request)
    deleted_id = await svc.assistants.delete(assistant_id)
    if delete_threads:
        await svc.threads.delete_for_assistant(deleted_id)
    return Response(status_code=204)


@router.post(
    "/assistants/{assistant_id}/versions",
    summary="List the versions of an assistant",
    response_model=list[AssistantVersion],
    responses={**_NOT_FOUND, **_INVALID},
)
async def assistant_versions(
    request: Request, assistant_id: AssistantIdPath, body: Annotated[AssistantVersionsSearch | None, Body()] = None
) -> JSON:
    body = body or AssistantVersionsSearch()
    versions = await services(request).assistants.versions(
        assistant_id, metadata=body.metadata, limit=body.limit, offset=body.offset
    )
    return JSON([public(v) for v in versions])


@router.post(
    "/assistants/{assistant_id}/latest",
    summary="Make a version of an assistant the current one",
    response_model=Assistant,
    responses={**_NOT_FOUND, **_INVALID},
)
async def set_latest_version(
    request: Request,
    assistant_id: AssistantIdPath,
    body: Annotated[AssistantSetLatest | None, Body()] = None,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_INT32, description="The version (older clients send it here)")
    ] = None,
) -> JSON:
    chosen = body.version if body is not None else version
    if chosen is None:
        raise InvalidInput("version: field required")
    return JSON(public(await services(request).assistants.set_latest(assistant_id, chosen)))


@router.get(
    "/assistants/{assistant_id}/graph",
    summary="Get the drawable graph of an assistant",
    response_model=DrawableGraph,
    responses={**_NOT_FOUND, **_INVALID},
)
async def assistant_graph(
    request: Request,
    assistant_id: AssistantIdPath,
    xray: Annotated[str, Query(description="true/false, or the depth (integer) of subgraphs to include")] = "false",
) -> JSON:
    return JSON(await services(request).assistants.graph(assistant_id, xray=_parse_xray(xray)))


@router.get(
    "/assistants/{assistant_id}/schemas",
    summary="Get the JSON schemas of an assistant's graph",
    response_model=GraphSchemas,
    responses={**_NOT_FOUND, **_INVALID},
)
async def assistant_schemas(request: Request, assistant_id: AssistantIdPath) -> JSON:
    return JSON(await services(request).assistants.schemas(assistant_id))


@router.get(
    "/assistants/{assistant_id}/subgraphs",
    summary="Get the schemas of an assistant's subgraphs",
    response_model=dict[str, dict[str, Any]],
    responses={**_NOT_FOUND, **_INVALID},
)
async def assistant_subgraphs(request: Request, assistant_id: AssistantIdPath, recurse: bool = False) -> JSON:
    return JSON(await services(request).assistants.subgraphs(assistant_id, recurse=recurse))


@router.get(
    "/assistants/{assistant_id}/subgraphs/{namespace}",
    summary="Get the schemas of the subgraph at a namespace",
    response_model=dict[str, dict[str, Any]],
    responses={**_NOT_FOUND, **_INVALID},
)
async def assistant_subgraphs_at(
    request: Request, assistant_id: AssistantIdPath, namespace: str, recurse: bool = False
) -> JSON:
    return JSON(await services(request).assistants.subgraphs(assistant_id, namespace=namespace, recurse=recurse))


def _parse_xray(raw: str) -> bool | int:
    """`xray`: true / false, or the depth of subgraphs to include."""
    value = raw.strip().lower()
    if value in ("true", "false", ""):
        return value == "true"
    if value.isdigit():
        return int(value)
    raise InvalidInput(f"xray: expected true, false or a non-negative integer, got '{raw}'")
