"""Request-scoped access to the process's runtime and services."""

from __future__ import annotations

from starlette.requests import Request

from agentserver.runtime import Runtime, Services


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def services(request: Request) -> Services:
    return request.app.state.runtime.services
