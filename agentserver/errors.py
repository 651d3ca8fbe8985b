"""Domain errors. Services and storage raise these; the HTTP layer maps them to status codes
(`AgentServerError` subclasses). `GraphLoadError` is raised by graph loading and builds."""

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


class GraphLoadError(RuntimeError):
    """A graph could not be imported or built (`agentserver.graphs`). The message names the
    graph, its source and the error; the original exception is chained as `__cause__`. Not an
    HTTP error by itself: a run reports it as its `error` (see `agentserver.wire.error_payload`),
    a state read or update as a 422."""

    def __init__(self, graph_id: str, source: str, message: str) -> None:
        super().__init__(f"Failed to load graph '{graph_id}' from {source}: {message}")
        self.graph_id = graph_id
        self.source = source
