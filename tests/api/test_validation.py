"""Bad requests to the assistant and thread endpoints: a 4xx whose `detail` names the problem,
never a 500. Raw HTTP (httpx), so that bodies the SDK would never send can be sent."""

from __future__ import annotations

import uuid

import httpx
import pytest

MISSING = str(uuid.uuid4())


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url) as client:
        yield client


@pytest.fixture(scope="module")
def ids(http) -> dict[str, str]:
    """{A}: a custom assistant; {T}: a thread of the steps graph with a checkpoint;
    {N}: a thread without a graph; {M}: an id nothing has."""
    a = http.post("/assistants", json={"graph_id": "echo"}).json()
    t = http.post("/threads", json={"metadata": {"graph_id": "steps"}}).json()
    r = http.post(f"/threads/{t['thread_id']}/state", json={"values": {"steps": ["x"]}, "as_node": "step_0"})
    assert r.status_code == 200, r.text
    n = http.post("/threads", json={}).json()
    return {"A": a["assistant_id"], "T": t["thread_id"], "N": n["thread_id"], "M": MISSING}


def _eleven_paths() -> dict[str, str]:
    return {f"k{i}": "values.x" for i in range(11)}


# (method, path, json body or raw bytes, expected status, words the detail must contain)
CASES = [
    # ---- assistants
    ("POST", "/assistants", {}, 422, ["graph_id", "required"]),
    ("POST", "/assistants", {"graph_id": 5}, 422, ["graph_id"]),
    ("POST", "/assistants", {"graph_id": "nope"}, 422, ["nope"]),
    ("POST", "/assistants", {"graph_id": "echo", "config": "x"}, 422, ["config"]),
    ("POST", "/assistants", {"graph_id": "echo", "context": [1]}, 422, ["context"]),
    ("POST", "/assistants", {"graph_id": "echo", "metadata": []}, 422, ["metadata"]),
    ("POST", "/assistants", {"graph_id": "echo", "if_exists": "maybe"}, 422, ["if_exists"]),
    ("POST", "/assistants", {"graph_id": "echo", "assistant_id": "abc"}, 422, ["assistant_id"]),
    ("POST", "/assistants", {"graph_id": "echo", "name": 5}, 422, ["name"]),
    (
        "POST", "/assistants",
        {"graph_id": "echo", "config": {"configurable": {"a": 1}}, "context": {"b": 1}},
        400, ["context"],
    ),
    ("POST", "/assistants", b"{not json", 422, ["JSON"]),
    ("POST", "/assistants", [1, 2], 422, ["body"]),
    ("GET", "/assistants/{M}", None, 404, ["{M}"]),
    ("GET", "/assistants/not-an-id", None, 404, ["not-an-id"]),
    ("PATCH", "/assistants/{A}", {"config": 1}, 422, ["config"]),
    ("PATCH", "/assistants/{A}", {"graph_id": "nope"}, 422, ["nope"]),
    ("PATCH", "/assistants/{M}", {"name": "x"}, 404, ["{M}"]),
    ("DELETE", "/assistants/{M}", None, 404, ["{M}"]),
    ("DELETE", "/assistants/{A}?delete_threads=perhaps", None, 422, ["delete_threads"]),
    ("POST", "/assistants/search", {"limit": 0}, 422, ["limit"]),
    ("POST", "/assistants/search", {"limit": 1001}, 422, ["limit"]),
    ("POST", "/assistants/search", {"offset": -1}, 422, ["offset"]),
    ("POST", "/assistants/search", {"sort_by": "colour"}, 422, ["sort_by"]),
    ("POST", "/assistants/search", {"sort_order": "up"}, 422, ["sort_order"]),
    ("POST", "/assistants/search", {"select": ["bogus"]}, 422, ["select"]),
    ("POST", "/assistants/search", {"metadata": "x"}, 422, ["metadata"]),
    ("POST", "/assistants/search", "a string", 422, ["body"]),
    ("POST", "/assistants/count", {"metadata": 1}, 422, ["metadata"]),
    ("POST", "/assistants/count", {"graph_id": []}, 422, ["graph_id"]),
    ("POST", "/assistants/{A}/versions", {"limit": "x"}, 422, ["limit"]),
    ("POST", "/assistants/{M}/versions", {}, 404, ["{M}"]),
    ("POST", "/assistants/{A}/latest", {}, 422, ["version"]),
    ("POST", "/assistants/{A}/latest", {"version": "x"}, 422, ["version"]),
    ("POST", "/assistants/{A}/latest", {"version": 99}, 404, ["99"]),
    ("POST", "/assistants/{M}/latest", {"version": 1}, 404, ["{M}"]),
    ("POST", "/assistants/{A}/latest", {"version": 2**31}, 422, ["version"]),
    ("POST", "/assistants/{A}/latest?version=2147483648", None, 422, ["version"]),
    ("POST", "/assistants/{A}/versions", {"offset": 2**63}, 422, ["offset"]),
    ("POST", "/assistants/count", b"\xff\xfe{}", 422, ["JSON"]),
    ("POST", "/assistants", b'{"graph_id": "echo", "config": {"x": 1e400}}', 422, ["config.x"]),
    ("GET", "/assistants/{A}/graph?xray=abc", None, 422, ["xray"]),
    ("GET", "/assistants/{M}/graph", None, 404, ["{M}"]),
    ("GET", "/assistants/{M}/schemas", None, 404, ["{M}"]),
    ("GET", "/assistants/subgraph/subgraphs?recurse=maybe", None, 422, ["recurse"]),
    ("GET", "/assistants/{M}/subgraphs", None, 404, ["{M}"]),
    ("GET", "/assistants/{M}/subgraphs/child", None, 404, ["{M}"]),
    # ---- threads
    ("POST", "/threads", {"thread_id": "abc"}, 422, ["thread_id"]),
    ("POST", "/threads", {"metadata": "a"}, 422, ["metadata"]),
    ("POST", "/threads", {"if_exists": "x"}, 422, ["if_exists"]),
    ("POST", "/threads", {"ttl": {"ttl": "a"}}, 422, ["ttl.ttl"]),
    ("POST", "/threads", {"ttl": -1}, 422, ["ttl.ttl"]),
    ("POST", "/threads", {"ttl": {"ttl": 1, "strategy": "shred"}}, 422, ["ttl.strategy"]),
    ("POST", "/threads", {"ttl": "soon"}, 422, ["ttl"]),
    ("POST", "/threads", {"supersteps": "x"}, 422, ["supersteps"]),
    ("POST", "/threads", {"supersteps": [{"updates": []}]}, 422, ["supersteps.0.updates"]),
    ("POST", "/threads", {"supersteps": [{"updates": [{"values": {}}]}]}, 422, ["as_node"]),
    ("POST", "/threads", {"supersteps": [{"updates": [{"values": {}, "as_node": "a"}]}]}, 422, ["graph_id"]),
    (
        "POST", "/threads",
        {"metadata": {"graph_id": "nope"}, "supersteps": [{"updates": [{"values": {}, "as_node": "a"}]}]},
        422, ["nope"],
    ),
    ("GET", "/threads/{M}", None, 404, ["{M}"]),
    ("PATCH", "/threads/{T}", {"metadata": 1}, 422, ["metadata"]),
    ("PATCH", "/threads/{T}", {"ttl": {"ttl": 0}}, 422, ["ttl.ttl"]),
    ("PATCH", "/threads/{M}", {"metadata": {}}, 404, ["{M}"]),
    ("DELETE", "/threads/{M}", None, 404, ["{M}"]),
    ("POST", "/threads/{M}/copy", None, 404, ["{M}"]),
    ("POST", "/threads/search", {"status": "bogus"}, 422, ["status"]),
    ("POST", "/threads/search", {"ids": ["x"]}, 422, ["ids.0"]),
    ("POST", "/threads/search", {"limit": 1001}, 422, ["limit"]),
    ("POST", "/threads/search", {"sort_by": "colour"}, 422, ["sort_by"]),
    ("POST", "/threads/search", {"select": ["nope"]}, 422, ["select"]),
    ("POST", "/threads/search", {"values": []}, 422, ["values"]),
    ("POST", "/threads/search", {"extract": {"a": "values..x"}}, 422, ["extract.a"]),
    ("POST", "/threads/search", {"extract": _eleven_paths()}, 422, ["extract"]),
    ("POST", "/threads/count", {"status": "x"}, 422, ["status"]),
    ("POST", "/threads/prune", {}, 422, ["thread_ids", "required"]),
    ("POST", "/threads/prune", {"thread_ids": "x"}, 422, ["thread_ids"]),
    ("POST", "/threads/prune", {"thread_ids": [], "strategy": "x"}, 422, ["strategy"]),
    ("GET", "/threads/{T}/state?subgraphs=maybe", None, 422, ["subgraphs"]),
    ("GET", "/threads/{T}/state?select=bogus", None, 422, ["select"]),
    ("GET", "/threads/{M}/state", None, 404, ["{M}"]),
    ("GET", "/threads/{M}/state/" + MISSING, None, 404, ["{M}"]),
    ("POST", "/threads/{T}/state", {"values": "str"}, 422, ["values"]),
    ("POST", "/threads/{T}/state", {"values": {}, "as_node": 5}, 422, ["as_node"]),
    ("POST", "/threads/{T}/state", {"values": {}, "checkpoint": "x"}, 422, ["checkpoint"]),
    ("POST", "/threads/{T}/state", {"values": {"steps": ["y"]}, "as_node": "nowhere"}, 400, ["nowhere"]),
    ("POST", "/threads/{N}/state", {"values": {"steps": ["y"]}}, 400, ["graph"]),
    ("POST", "/threads/{M}/state", {"values": {}}, 404, ["{M}"]),
    ("POST", "/threads/{T}/state", b"", 422, ["body"]),
    ("POST", "/threads/{T}/state/checkpoint", {}, 422, ["checkpoint", "required"]),
    ("POST", "/threads/{T}/state/checkpoint", {"checkpoint": {"checkpoint_id": 5}}, 422, ["checkpoint.checkpoint_id"]),
    ("POST", "/threads/{M}/state/checkpoint", {"checkpoint": {}}, 404, ["{M}"]),
    ("POST", "/threads/{T}/history", {"limit": 0}, 422, ["limit"]),
    ("POST", "/threads/{T}/history", {"limit": "x"}, 422, ["limit"]),
    ("POST", "/threads/{T}/history", {"before": 5}, 422, ["before"]),
    ("POST", "/threads/{T}/history", {"metadata": []}, 422, ["metadata"]),
    ("POST", "/threads/{M}/history", {}, 404, ["{M}"]),
    ("GET", "/threads/{T}/history?limit=0", None, 422, ["limit"]),
    ("GET", "/threads/{M}/history", None, 404, ["{M}"]),
]


@pytest.mark.parametrize(
    "method,path,body,status,words", CASES, ids=[f"{c[0]} {c[1]} {c[2]!r}"[:90] for c in CASES]
)
def test_bad_request(http, ids, method, path, body, status, words):
    path = path.format(**ids)
    kwargs: dict = {}
    if isinstance(body, bytes):
        kwargs = {"content": body, "headers": {"content-type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    r = http.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word.format(**ids) in detail, detail


def test_unknown_keys_are_ignored(http):
    r = http.post("/assistants", json={"graph_id": "echo", "brand_new_option": True})
    assert r.status_code == 200, r.text
    r = http.post("/threads", json={"future": {"x": 1}})
    assert r.status_code == 200, r.text
    r = http.post("/threads/search", json={"limit": 1, "unknown": 1})
    assert r.status_code == 200, r.text


def test_openapi_describes_the_endpoints(http):
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [
        ("/assistants", "post"), ("/assistants/search", "post"), ("/assistants/count", "post"),
        ("/assistants/{assistant_id}", "get"), ("/assistants/{assistant_id}", "patch"),
        ("/assistants/{assistant_id}", "delete"), ("/assistants/{assistant_id}/versions", "post"),
        ("/assistants/{assistant_id}/latest", "post"), ("/assistants/{assistant_id}/graph", "get"),
        ("/assistants/{assistant_id}/schemas", "get"), ("/assistants/{assistant_id}/subgraphs", "get"),
        ("/assistants/{assistant_id}/subgraphs/{namespace}", "get"),
        ("/threads", "post"), ("/threads/search", "post"), ("/threads/count", "post"),
        ("/threads/prune", "post"), ("/threads/{thread_id}", "get"), ("/threads/{thread_id}", "patch"),
        ("/threads/{thread_id}", "delete"), ("/threads/{thread_id}/copy", "post"),
        ("/threads/{thread_id}/state", "get"), ("/threads/{thread_id}/state", "post"),
        ("/threads/{thread_id}/state/checkpoint", "post"), ("/threads/{thread_id}/state/{checkpoint_id}", "get"),
        ("/threads/{thread_id}/history", "get"), ("/threads/{thread_id}/history", "post"),
    ]:
        op = paths[path][method]
        assert op.get("summary"), (method, path)
    create = paths["/assistants"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["$ref"].endswith("/AssistantCreate")
    assert "graph_id" in spec["components"]["schemas"]["AssistantCreate"]["required"]


# ---- numbers out of range, through the SDK (issue 8): a 422 naming the field, or stored the way
# the official server stores them (an integer beyond 64 bits becomes a float), never a 500.

BIG = 2**70  # beyond 64 bits: the SDK's orjson refuses to encode it, so it goes as raw JSON
BIG_JSON = str(BIG)


async def _raw_post(client, path: str, body: str):
    """POST a JSON text through the SDK's own HTTP client (for numbers the SDK cannot encode)."""
    return await client.http.client.post(path, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("resource", ["threads", "assistants"])
@pytest.mark.parametrize("offset", [1e21, 2**63, 2**64 - 1])
async def test_search_offset_out_of_range_is_a_422(client, resource, offset):
    from langgraph_sdk.errors import UnprocessableEntityError

    search = client.threads.search if resource == "threads" else client.assistants.search
    with pytest.raises(UnprocessableEntityError) as info:
        await search(offset=offset)
    assert "offset" in info.value.response.json()["detail"]
    assert await search(offset=2**53 - 1) == []  # the largest offset accepted: an empty page


@pytest.mark.parametrize("resource", ["threads", "assistants"])
async def test_metadata_integer_beyond_64_bits_is_stored_as_a_float(client, resource):
    tag = str(uuid.uuid4())
    extra = '"graph_id": "echo", ' if resource == "assistants" else ""
    r = await _raw_post(client, f"/{resource}", f'{{{extra}"metadata": {{"n": {BIG_JSON}, "tag": "{tag}"}}}}')
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["metadata"]["n"] == float(BIG)
    if resource == "threads":
        got = await client.threads.get(created["thread_id"])
        found = await client.threads.search(metadata={"n": float(BIG), "tag": tag})
        ids = [t["thread_id"] for t in found]
        key = "thread_id"
    else:
        got = await client.assistants.get(created["assistant_id"])
        found = await client.assistants.search(metadata={"n": float(BIG), "tag": tag})
        ids = [a["assistant_id"] for a in found]
        key = "assistant_id"
    assert got["metadata"] == {"n": float(BIG), "tag": tag}
    assert ids == [created[key]]
    # a search filter beyond 64 bits means the same float
    r = await _raw_post(client, f"/{resource}/search", f'{{"metadata": {{"n": {BIG_JSON}, "tag": "{tag}"}}}}')
    assert r.status_code == 200, r.text
    assert [x[key] for x in r.json()] == [created[key]]


@pytest.mark.parametrize("resource", ["threads", "assistants"])
@pytest.mark.parametrize("number", ["1" + "0" * 400, "1e400", "-1e400", "NaN", "Infinity"])
async def test_metadata_number_no_json_reader_reads_is_a_422(client, resource, number):
    tag = str(uuid.uuid4())
    extra = '"graph_id": "echo", ' if resource == "assistants" else ""
    r = await _raw_post(client, f"/{resource}", f'{{{extra}"metadata": {{"tag": "{tag}", "deep": [0, {number}]}}}}')
    assert r.status_code == 422, r.text
    assert "metadata.deep.1" in r.json()["detail"]
    search = client.threads.search if resource == "threads" else client.assistants.search
    assert await search(metadata={"tag": tag}) == []  # nothing half-written


@pytest.mark.parametrize("ttl", [1e20, {"ttl": 1e20, "strategy": "delete"}, 10**12])
async def test_thread_ttl_out_of_range_is_a_422(client, ttl):
    from langgraph_sdk.errors import UnprocessableEntityError

    tag = str(uuid.uuid4())
    with pytest.raises(UnprocessableEntityError) as info:
        await client.threads.create(metadata={"tag": tag}, ttl=ttl)
    assert "ttl.ttl" in info.value.response.json()["detail"]
    assert await client.threads.search(metadata={"tag": tag}) == []
    thread = await client.threads.create(metadata={"tag": tag}, ttl=1_000_000_000)  # the largest accepted
    with pytest.raises(UnprocessableEntityError) as info:
        await client.threads.update(thread["thread_id"], metadata={}, ttl=ttl)
    assert "ttl.ttl" in info.value.response.json()["detail"]


async def test_run_numbers_out_of_range_are_a_422(client):
    from langgraph_sdk.errors import UnprocessableEntityError

    thread = await client.threads.create()
    with pytest.raises(UnprocessableEntityError) as info:
        await client.runs.create(thread["thread_id"], "echo", input={"x": 1}, after_seconds=1e20)
    assert "after_seconds" in info.value.response.json()["detail"]
    r = await _raw_post(client, f"/threads/{thread['thread_id']}/runs", '{"assistant_id": "echo", "input": {"x": 1e400}}')
    assert r.status_code == 422, r.text
    assert "input.x" in r.json()["detail"]
    assert await client.runs.list(thread["thread_id"]) == []
