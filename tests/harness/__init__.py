"""The process harness shared by the tests and `bench/`: real Postgres and Redis servers on
loopback (`backends`), and Agent Server processes of both shapes (`servers`), on free ports."""

from tests.harness.backends import PostgresServer, RedisServer, free_port, pg_bin
from tests.harness.servers import ROOT, TEST_GRAPHS, RoundRobinProxy, ScaledCluster, ServerProcess, agentserver_args

__all__ = [
    "ROOT",
    "TEST_GRAPHS",
    "PostgresServer",
    "RedisServer",
    "RoundRobinProxy",
    "ScaledCluster",
    "ServerProcess",
    "agentserver_args",
    "free_port",
    "pg_bin",
]
