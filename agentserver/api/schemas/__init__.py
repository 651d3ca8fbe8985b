"""Request bodies and documented response shapes of the HTTP API, one module per resource.

Request models are pydantic v2 models that ignore unknown keys (the SDK sends keys older servers
do not know). A body that fails its model becomes a 422 whose detail names the field
(`agentserver.api.errors`). Response models only describe the wire shapes in /openapi.json:
routes answer with `agentserver.api.responses.JSON`, never through FastAPI's serialisation.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, create_model, model_validator
from pydantic_core import PydanticCustomError

from agentserver.utils import NumberOutOfRange, json_numbers

# Bounds of the numeric fields, so that no number a client sends overflows SQLite, Postgres or
# datetime arithmetic (a 422 naming the field instead of a 500).
MAX_OFFSET = 2**53 - 1  # the largest integer every JSON client reads exactly
MAX_INT32 = 2**31 - 1  # assistant versions are Postgres `integer`s
MAX_TTL_MINUTES = 1_000_000_000  # ~1900 years: expiry times stay within every date type
MAX_DELAY_SECONDS = 1_000_000_000  # ~31 years


class RequestBody(BaseModel):
    """Base of every request body: unknown keys are ignored. Numbers are read as the official
    server reads them: an integer beyond 64 bits becomes a float; NaN, an infinity or an
    integer beyond a double's range is a 422 naming where it is (error type `json_number`)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _json_numbers(cls, data: Any) -> Any:
        try:
            return json_numbers(data)
        except NumberOutOfRange as exc:
            raise PydanticCustomError(
                "json_number", "{problem}", {"problem": str(exc) if exc.path else f"body: {exc}"}
            ) from None


class WireModel(BaseModel):
    """Base of documented response shapes (extra keys allowed: records may carry more)."""

    model_config = ConfigDict(extra="allow")


def selection(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """The documented shape of `model` projected by a search's `select`: every field optional."""
    # Optional[...] rather than `|`: the annotations are objects of any kind, built at run time.
    fields: dict[str, Any] = {n: (Optional[f.annotation], None) for n, f in model.model_fields.items()}  # noqa: UP045
    return create_model(name, __base__=WireModel, __doc__=doc, **fields)


__all__ = ["MAX_DELAY_SECONDS", "MAX_INT32", "MAX_OFFSET", "MAX_TTL_MINUTES", "RequestBody", "WireModel", "selection"]
