"""Domain errors. Services and storage raise these; the HTTP layer maps them to status codes."""

from __future__ import annotations


class AgentServerError(Exception):
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(AgentServerError):
    status_code = 404


class Conflict(AgentServerError):
    status_code = 409


class InvalidInput(AgentServerError):
    status_code = 422


class BadRequest(AgentServerError):
    status_code = 400


class Unavailable(AgentServerError):
    """A backing service (database, broker) is unreachable right now. Retry later."""

    status_code = 503
