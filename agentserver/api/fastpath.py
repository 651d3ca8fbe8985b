"""Dispatch the hottest endpoints straight to their handlers.

FastAPI defines, validates and documents every route. Its per-request machinery (matching
over every route, dependency solving) costs more CPU than the whole of a simple read such as
`GET /threads/{id}` (see docs/adr/0001-fastapi-with-a-fast-path.md). This ASGI middleware recognises a short
list of hot (method, path) pairs and calls the *same handler functions* FastAPI would call,
with the path parameters and the body validated by the same pydantic model. Anything it does
not recognise, including any request with a query string, goes through FastAPI unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from agentserver.api.errors import describe_validation, error_response
from agentserver.api.responses import JSON


@dataclass(frozen=True)
class HotRoute:
    method: str
    segments: tuple[str, ...]  # literal segments, or "{name}" for a path parameter
    endpoint: Callable[..., Awaitable[Any]]
    body: type[BaseModel] | None = None  # the body model; None: no body
    body_required: bool = False

    def match(self, parts: list[str]) -> dict[str, Any] | None:
        """The endpoint's keyword arguments for `parts` (its path parameters, to which the
        caller adds the body), or None when the path is not this route's."""
        if len(parts) != len(self.segments):
            return None
        params: dict[str, Any] = {}
        for part, seg in zip(parts, self.segments, strict=False):
            if seg[0] == "{":
                if not part:
                    return None
                params[seg[1:-1]] = part
            elif part != seg:
                return None
        return params


def hot(method: str, path: str, endpoint, body: type[BaseModel] | None = None, *, required: bool = False) -> HotRoute:
    return HotRoute(method, tuple(path.strip("/").split("/")), endpoint, body, required)


class FastPath:
    def __init__(self, app: ASGIApp, routes: list[HotRoute]) -> None:
        self.app = app
        self.routes: dict[str, list[HotRoute]] = {}
        for route in routes:
            self.routes.setdefault(route.method, []).append(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("query_string"):
            return await self.app(scope, receive, send)
        candidates = self.routes.get(scope["method"])
        if not candidates:
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :]
        parts = path.strip("/").split("/")
        for route in candidates:
            params = route.match(parts)
            if params is not None:
                break
        else:
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        try:
            if route.body is not None:
                raw = await request.body()
                if raw.strip():
                    try:
                        params["body"] = route.body.model_validate_json(raw)
                    except ValidationError as exc:
                        response = JSON({"detail": describe_validation(exc.errors())}, status_code=422)
                        return await response(scope, receive, send)
                elif route.body_required:
                    response = JSON({"detail": "body: field required"}, status_code=422)
                    return await response(scope, receive, send)
                else:
                    params["body"] = None
            response = await route.endpoint(request, **params)
        except Exception as exc:  # noqa: BLE001 - mapped like FastAPI's exception handlers
            response = error_response(request, exc)
        await response(scope, receive, send)


def install(app) -> None:
    """Put the fast path in front of FastAPI's router (inside CORS and error middleware)."""
    from agentserver.api import assistants, runs, threads
    from agentserver.api.schemas.assistants import AssistantSearch
    from agentserver.api.schemas.runs import RunCreate
    from agentserver.api.schemas.threads import ThreadCreate, ThreadSearch

    routes = [
        hot("GET", "/threads/{thread_id}", threads.get_thread),
        hot("POST", "/threads", threads.create_thread, ThreadCreate),
        hot("POST", "/threads/search", threads.search_threads, ThreadSearch),
        hot("GET", "/threads/{thread_id}/state", threads.get_state),
        hot("GET", "/assistants/{assistant_id}", assistants.get_assistant),
        hot("POST", "/assistants/search", assistants.search_assistants, AssistantSearch),
        hot("GET", "/threads/{thread_id}/runs/{run_id}", runs.get_run),
        hot("POST", "/threads/{thread_id}/runs", runs.create_run, RunCreate, required=True),
        hot("POST", "/threads/{thread_id}/runs/stream", runs.create_stream, RunCreate, required=True),
        hot("POST", "/threads/{thread_id}/runs/wait", runs.create_wait, RunCreate, required=True),
        hot("POST", "/runs", runs.create_stateless, RunCreate, required=True),
        hot("POST", "/runs/stream", runs.stream_stateless, RunCreate, required=True),
        hot("POST", "/runs/wait", runs.wait_stateless, RunCreate, required=True),
    ]
    app.add_middleware(FastPath, routes=routes)
