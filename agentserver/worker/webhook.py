"""POST a finished run to its webhook: in the background, with a timeout and retries.
A webhook never blocks or fails the run."""

from __future__ import annotations

import asyncio

import httpx
import structlog

from agentserver.run_spec import RunSpec
from agentserver.settings import Settings
from agentserver.storage.base import Record, RunEnd
from agentserver.utils import dumps, now

log = structlog.get_logger(__name__)


def webhook_body(run: Record, spec: RunSpec, end: RunEnd, values) -> bytes:
    """The run as the webhook receives it: its record (`kwargs` from `spec`), its end, and the
    thread's final values."""
    body = {k: run.get(k) for k in ("run_id", "thread_id", "assistant_id", "metadata")}
    body.update(
        kwargs=spec.to_json(), multitask_strategy=run.get("multitask_strategy"), created_at=run.get("created_at")
    )
    body.update(status=end.status, updated_at=now(), values=values)
    if end.error is not None:
        body["error"] = end.error
    return dumps(body)


async def send_webhook(settings: Settings, run: Record, spec: RunSpec, end: RunEnd, values) -> bool:
    """POST the run's end to `spec.webhook` (the caller sends only runs that have one); True
    once it is accepted (a 2xx/3xx)."""
    url = str(spec.webhook)
    content = webhook_body(run, spec, end, values)
    delay = 0.5
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_secs) as client:
        for attempt in range(settings.webhook_max_retries + 1):
            try:
                res = await client.post(url, content=content, headers={"content-type": "application/json"})
                if res.status_code < 500 and res.status_code != 429:
                    if res.status_code >= 400:
                        log.warning("webhook rejected", url=url, status=res.status_code, run_id=run["run_id"])
                    return res.status_code < 400
            except httpx.HTTPError as exc:
                log.warning("webhook failed", url=url, error=repr(exc), attempt=attempt + 1, run_id=run["run_id"])
            if attempt < settings.webhook_max_retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
    return False
