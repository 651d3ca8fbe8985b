"""Request bodies and documented response shapes of the HTTP API, one module per resource.

Request models are pydantic v2 models that ignore unknown keys (the SDK sends keys older servers
do not know). A body that fails its model becomes a 422 whose detail names the field
(`agentserver.api.errors`). Response models only describe the wire shapes in /openapi.json:
routes answer with `agentserver.api.responses.JSON`, never through FastAPI's serialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator
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


ModelT = TypeVar("ModelT", bound=BaseModel)


def selection_of(model: type[BaseModel]) -> Callable[[type[ModelT]], type[ModelT]]:
    """Class decorator of the documented shape of `model` projected by a search's `select`:
    checks, at import, that the class declares every field of `model`, in order, optional and
    defaulting to None (so that the projection cannot drift from the model)."""

    def check(cls: type[ModelT]) -> type[ModelT]:
        fields, expected = cls.model_fields, model.model_fields
        if list(fields) != list(expected) or any(
            f.default is not None or f.annotation != Optional[expected[n].annotation]  # noqa: UP045
            for n, f in fields.items()
        ):
            raise TypeError(
                f"{cls.__name__} must declare each field of {model.__name__}, in order, as `X | None = None`"
            )
        return cls

    return check


__all__ = [
    "MAX_DELAY_SECONDS",
    "MAX_INT32",
    "MAX_OFFSET",
    "MAX_TTL_MINUTES",
    "RequestBody",
    "WireModel",
    "selection_of",
]
