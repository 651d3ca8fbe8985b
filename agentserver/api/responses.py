"""Response helpers shared by every route module: JSON bodies, pagination headers, projection."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.responses import Response

from agentserver.utils import dumps

# Internal record fields that never leave the server.
_HIDDEN = frozenset({"attempt", "available_at", "lease_owner", "lease_id", "lease_expires_at", "expires_at", "ttl"})


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def public(record: dict[str, Any] | None, select: Iterable[str] | None = None) -> dict[str, Any] | None:
    """The wire form of a storage record: internals dropped, optionally projected to `select`."""
    if record is None:
        return None
    if select:
        return {k: record.get(k) for k in select if k not in _HIDDEN}
    return {k: v for k, v in record.items() if k not in _HIDDEN}


def page(
    items: list[dict[str, Any]],
    *,
    total: int,
    offset: int,
    limit: int,
    select: Iterable[str] | None = None,
) -> JSON:
    """A search result: a JSON array with X-Pagination-Total / X-Pagination-Next headers."""
    headers = {"X-Pagination-Total": str(total)}
    if offset + len(items) < total:
        headers["X-Pagination-Next"] = str(offset + limit)
    sel = list(select) if select else None
    return JSON([public(i, sel) for i in items], headers=headers)


# ---- OpenAPI descriptions shared by the route modules --------------------------------------
def error_doc(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """An error response in the spec: a JSON body `{"detail": ...}`."""
    return {
        status: {
            "description": description,
            "content": {"application/json": {"example": {"detail": "..."}}},
        }
    }


PAGINATED_DOC: dict[str, Any] = {
    "headers": {
        "X-Pagination-Total": {"description": "Number of matches", "schema": {"type": "integer"}},
        "X-Pagination-Next": {
            "description": "Offset of the next page (absent on the last)",
            "schema": {"type": "integer"},
        },
    }
}
