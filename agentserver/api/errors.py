"""Map every failure to a JSON `{"detail": ...}` body with a fitting status; never a bare 500."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentserver.api.responses import JSON
from agentserver.errors import AgentServerError

log = structlog.get_logger(__name__)


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) if parts else "body"


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """One `detail` line naming each invalid field, from pydantic's (or FastAPI's) error list."""
    messages = []
    for err in errors:
        kind = err.get("type", "")
        where = _loc(tuple(err.get("loc", ())))
        if kind == "json_invalid":
            messages.append(f"Request body is not valid JSON: {err.get('ctx', {}).get('error', '')}".rstrip(": "))
        elif kind == "json_number":  # the message names the path inside the body already
            messages.append(err.get("msg", "number out of range") if where == "body" else f"{where}.{err.get('msg')}")
        elif kind == "missing":
            messages.append(f"{where}: field required")
        else:
            messages.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "; ".join(messages) or "Invalid request"


def error_response(request: Request, exc: Exception) -> JSON:
    """The response for any exception a handler raised: domain errors keep their status,
    an unreachable backing service is a 503, anything else a logged 500."""
    from agentserver.errors import Unavailable
    from agentserver.storage.errors import is_invalid_data, is_unavailable

    if isinstance(exc, AgentServerError):
        return JSON({"detail": exc.detail}, status_code=exc.status_code)
    if isinstance(exc, RequestValidationError):
        return JSON({"detail": describe_validation(exc.errors())}, status_code=422)
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's "error parsing the body": a body that is not UTF-8 is not JSON either
            # (a 422, like any other undecodable body and like the fast path answers)
            return JSON({"detail": "Request body is not valid JSON: it is not UTF-8"}, status_code=422)
        return JSON({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    if isinstance(exc, json.JSONDecodeError):
        return JSON({"detail": f"Request body is not valid JSON: {exc.msg}"}, status_code=422)
    if isinstance(exc, Unavailable) or is_unavailable(exc):
        return JSON({"detail": "Service temporarily unavailable, retry shortly"}, status_code=503)
    if is_invalid_data(exc):
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.info("storage refused a value", path=request.url.path, error=problem)
        return JSON({"detail": f"Invalid value in the request: {problem}"}, status_code=422)
    log.exception("unhandled error", path=request.url.path)
    return JSON({"detail": f"Internal error: {type(exc).__name__}"}, status_code=500)


# The body of every error response, as /openapi.json documents it.
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"type": "string", "title": "Detail", "description": "What went wrong."}},
    "required": ["detail"],
}


def document_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Replace FastAPI's default 422 body (a list of pydantic errors, which this server never
    sends) with the `{"detail": "..."}` every error response carries."""
    schemas = spec.get("components", {}).get("schemas", {})
    if "HTTPValidationError" in schemas:
        schemas["HTTPValidationError"] = {**ERROR_SCHEMA, "title": "HTTPValidationError"}
        schemas.pop("ValidationError", None)
    return spec


def install(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSON:
        return error_response(request, exc)

    for kind in (AgentServerError, RequestValidationError, StarletteHTTPException, json.JSONDecodeError, Exception):
        app.add_exception_handler(kind, handle)

    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
