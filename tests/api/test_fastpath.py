"""The hot-route dispatcher: matches exactly what it should and hands everything else on."""

from __future__ import annotations

import httpx
from pydantic import BaseModel

from agentserver.api.fastpath import FastPath, hot
from agentserver.api.responses import JSON


class Body(BaseModel):
    n: int = 0


async def _endpoint(request, thread_id: str, body: Body | None = None):
    return JSON({"fast": True, "thread_id": thread_id, "n": body.n if body else None})


async def _fallback(scope, receive, send):
    await JSON({"fast": False})(scope, receive, send)


def _client(required: bool = False) -> httpx.AsyncClient:
    app = FastPath(_fallback, [hot("POST", "/threads/{thread_id}/x", _endpoint, Body, required=required)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_match_segments():
    route = hot("GET", "/threads/{thread_id}", _endpoint)
    assert route.match(["threads", "abc"]) == {"thread_id": "abc"}
    assert route.match(["threads"]) is None
    assert route.match(["threads", "abc", "state"]) is None
    assert route.match(["assistants", "abc"]) is None
    assert route.match(["threads", ""]) is None


async def test_hot_route_is_served_directly():
    async with _client() as http:
        r = await http.post("/threads/t1/x", json={"n": 3})
        assert r.json() == {"fast": True, "thread_id": "t1", "n": 3}
        assert (await http.post("/threads/t1/x")).json()["n"] is None


async def test_everything_else_falls_through():
    async with _client() as http:
        assert (await http.get("/threads/t1/x")).json() == {"fast": False}
        assert (await http.post("/threads/t1/y", json={})).json() == {"fast": False}
        assert (await http.post("/threads/t1/x?debug=1", json={})).json() == {"fast": False}


async def test_bad_bodies_are_422_naming_the_field():
    async with _client(required=True) as http:
        r = await http.post("/threads/t1/x", json={"n": "many"})
        assert r.status_code == 422 and r.json()["detail"].startswith("n:")
        r = await http.post("/threads/t1/x", content=b"{nope")
        assert r.status_code == 422 and "JSON" in r.json()["detail"]
        r = await http.post("/threads/t1/x")
        assert r.status_code == 422 and "required" in r.json()["detail"]
