"""Server-Sent Events framing (WIRE.md "Streams") and the /wait keep-alive body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from agentserver.utils import dumps

SSE_HEADERS = {
    "cache-control": "no-store",
    "x-accel-buffering": "no",
}
HEARTBEAT = b": heartbeat\r\n\r\n"


def frame(event: str, data: bytes, event_id: str | None = None) -> bytes:
    if event_id is None:
        return b"event: " + event.encode() + b"\r\ndata: " + data + b"\r\n\r\n"
    return b"event: " + event.encode() + b"\r\ndata: " + data + b"\r\nid: " + event_id.encode() + b"\r\n\r\n"


def frame_json(event: str, payload: Any, event_id: str | None = None) -> bytes:
    return frame(event, dumps(payload), event_id)


def sse_response(body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream; charset=utf-8",
        headers={**SSE_HEADERS, **(headers or {})},
    )


async def keepalive_json(result: asyncio.Future[Any] | asyncio.Task[Any], interval: float) -> AsyncIterator[bytes]:
    """The /wait body: a newline every `interval` seconds until `result` resolves, then its JSON."""
    while True:
        try:
            value = await asyncio.wait_for(asyncio.shield(result), interval)
        except TimeoutError:
            yield b"\n"
            continue
        yield dumps(value)
        return
