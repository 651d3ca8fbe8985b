"""Property-based conformance of the HTTP API to its own /openapi.json (schemathesis).

For every operation of the spec, schemathesis generates requests that fit the spec (positive)
and requests that do not (negative), sends them to a live server and checks each response: no
5xx, a status code the spec declares, the declared content type, a body that fits the declared
schema. One fresh server per shape (embedded; scaled over Postgres and Redis), so the junk the
fuzzer creates touches no other test. Deterministic (derandomized, no example database) and
bounded: a few examples per operation and mode.
"""

from __future__ import annotations

import pytest
import schemathesis  # the `test` extra (pyproject.toml)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}
# A request that outlives this (a stream or a wait on a run that never ends) is a failure too.
REQUEST_TIMEOUT = 10.0


@pytest.fixture(scope="module", params=["embedded", "scaled"])
def fuzz_url(request):
    """A fresh server of each shape (like the `server` fixture in conftest.py), for this module only."""
    from tests.harness import ScaledCluster, ServerProcess

    if request.param == "embedded":
        proc = ServerProcess("dev").start()
        yield proc.url
        proc.stop()
        return
    pg = request.getfixturevalue("postgres_server")
    redis = request.getfixturevalue("redis_server")
    cluster = ScaledCluster(
        pg.create_database("schemathesis"), redis.uri, n_api=1, n_workers=1,
        env={"REDIS_KEY_PREFIX": "fuzz:"},
    ).start()
    yield cluster.url
    cluster.stop()


def _run_operation(operation, url: str, mode: GenerationMode) -> None:
    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing case is reported as found
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        case.call_and_validate(base_url=url, checks=CHECKS, timeout=REQUEST_TIMEOUT)

    check()


def test_api_conforms_to_its_openapi(fuzz_url):
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    failures: list[str] = []
    n = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        n += 1
        for mode in EXAMPLES:
            try:
                _run_operation(operation, fuzz_url, mode)
            except Unsatisfiable:
                continue  # nothing can violate this operation's spec (negative mode, string params only)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every operation is tried
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert n >= 40, f"only {n} operations in /openapi.json"
    assert not failures, "\n\n".join(failures)
