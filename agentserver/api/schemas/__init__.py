"""Request bodies and documented response shapes of the HTTP API, one module per resource.

Request models are pydantic v2 models that ignore unknown keys (the SDK sends keys older servers
do not know). A body that fails its model becomes a 422 whose detail names the field
(`agentserver.api.errors`). Response models only describe the wire shapes in /openapi.json:
routes answer with `agentserver.api.responses.JSON`, never through FastAPI's serialisation.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestBody(BaseModel):
    """Base of every request body: unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")


class WireModel(BaseModel):
    """Base of documented response shapes (extra keys allowed: records may carry more)."""

    model_config = ConfigDict(extra="allow")


__all__ = ["RequestBody", "WireModel"]
