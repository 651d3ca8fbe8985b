"""HTTP API: routes per resource, request schemas, SSE framing, error mapping."""

from agentserver.api.app import create_app

__all__ = ["create_app"]
