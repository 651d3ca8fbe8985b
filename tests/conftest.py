from __future__ import annotations

import pytest

from tests.harness import PostgresServer, RedisServer


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


@pytest.fixture(scope="session")
def server():
    """The embedded server (`agentserver dev`) on the test graphs, shared by the SDK tests."""
    from tests.server import ServerProcess

    proc = ServerProcess("dev", env={"N_JOBS_PER_WORKER": "20"}).start()
    yield proc
    proc.stop()


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
