"""Health, server info and metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from agentserver import __version__
from agentserver.api.deps import runtime
from agentserver.api.responses import JSON, error_doc

log = structlog.get_logger(__name__)

router = APIRouter(tags=["System"])

# How long /ok?check_db=1 waits for each backing service before calling it down.
CHECK_TIMEOUT_SECS = 5.0


@router.get(
    "/ok",
    summary="Health check",
    responses={**error_doc(422, "Invalid check_db"), **error_doc(503, "A backing service does not answer")},
)
async def ok(
    request: Request,
    check_db: Annotated[
        int, Query(ge=0, le=1, description="1: also check that the storage and the broker answer (503 if not).")
    ] = 0,
) -> JSON:
    if check_db:
        rt = runtime(request)
        results = await asyncio.gather(_check(rt.storage.ping), _check(rt.broker.ping))
        down = [f"{name}: {problem}" for name, problem in zip(("storage", "broker"), results, strict=False) if problem]
        if down:
            return JSON({"detail": "Unavailable: " + "; ".join(down)}, status_code=503)
    return JSON({"ok": True})


async def _check(ping) -> str | None:
    """None if `ping()` succeeds in time, else what went wrong."""
    try:
        await asyncio.wait_for(ping(), CHECK_TIMEOUT_SECS)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_SECS:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        log.warning("health check failed", error=repr(exc))
        return getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
    return None


@router.get("/info", summary="Server information")
async def info(request: Request) -> JSON:
    rt = runtime(request)
    return JSON(
        {
            "version": __version__,
            "langgraph_py_version": _langgraph_version(),
            "flags": {
                "assistants": True,
                "crons": False,
                "langsmith": False,
                "langsmith_tracing_replicas": False,
            },
            "host": {"kind": "self-hosted", "shape": rt.shape},
            "metadata": {"server": "agentserver", "shape": rt.shape},
        }
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    import agentserver.metrics  # noqa: F401 - registers the server's metrics

    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _langgraph_version() -> str:
    from importlib.metadata import version

    try:
        return version("langgraph")
    except Exception:  # noqa: BLE001
        return "unknown"
