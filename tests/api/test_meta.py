"""System endpoints: /ok, /info, /metrics, /openapi.json, /docs."""

from __future__ import annotations

import httpx


async def test_ok_info_docs(url):
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/ok")).json() == {"ok": True}
        info = (await http.get("/info")).json()
        assert info["version"] and info["flags"]["assistants"] is True
        spec = (await http.get("/openapi.json")).json()
        for path in ("/threads/{thread_id}/runs/stream", "/runs/wait", "/assistants/search", "/threads/{thread_id}/state"):
            assert path in spec["paths"], path
        docs = await http.get("/docs")
        assert docs.status_code == 200 and "openapi.json" in docs.text


async def test_metrics_count_runs(client, url, server):
    thread = await client.threads.create()
    await client.runs.wait(thread["thread_id"], "echo", input={"value": 1})
    async with httpx.AsyncClient(base_url=url) as http:
        body = (await http.get("/metrics")).text
    assert "agentserver_job_slots" in body
    if getattr(server, "command", None) == "dev":  # the embedded process executes the runs itself
        assert 'agentserver_runs_ended_total{status="success"}' in body
