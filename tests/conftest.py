from __future__ import annotations

import pytest

from tests.harness import PostgresServer, RedisServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need a real Postgres or Redis (`-m "not postgres and not redis"`
    runs the rest): those using the backend fixtures, and the scaled side of `server`."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        scaled = callspec is not None and callspec.params.get("server") == "scaled"
        if "postgres_server" in fixtures or scaled:
            item.add_marker(pytest.mark.postgres)
        if "redis_server" in fixtures or scaled:
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session", params=["embedded", "scaled"])
def server(request):
    """A live deployment on the test graphs, shared by the SDK tests, in each shape:
    `embedded` = one `agentserver dev` process; `scaled` = two API servers and two queue workers
    as separate processes over one Postgres and one Redis, behind a round-robin proxy."""
    from tests.harness import ScaledCluster, ServerProcess

    if request.param == "embedded":
        proc = ServerProcess("dev", env={"N_JOBS_PER_WORKER": "20"}).start()
        yield proc
        proc.stop()
        return
    pg = request.getfixturevalue("postgres_server")
    redis = request.getfixturevalue("redis_server")
    cluster = ScaledCluster(
        pg.create_database("sdk_scaled"),
        redis.uri,
        env={"N_JOBS_PER_WORKER": "20", "REDIS_KEY_PREFIX": "sdk:", "BG_JOB_LEASE_SECS": "3"},
    ).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def url(server) -> str:
    return server.url


@pytest.fixture
def client(url):
    from langgraph_sdk import get_client

    return get_client(url=url, api_key=None)


@pytest.fixture
def sync_client(url):
    from langgraph_sdk import get_sync_client

    return get_sync_client(url=url, api_key=None)
