"""Health, server info and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from agentserver import __version__
from agentserver.api.deps import runtime
from agentserver.api.responses import JSON

router = APIRouter(tags=["System"])


@router.get("/ok", summary="Health check")
async def ok() -> JSON:
    return JSON({"ok": True})


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
        }
    )


@router.get("/metrics", summary="Prometheus metrics")
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
