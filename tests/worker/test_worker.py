"""The worker in-process, on an embedded runtime: control signals around the claim."""

from __future__ import annotations

import asyncio

from agentserver.config import apply_env, load_config
from agentserver.graphs import GraphRegistry
from agentserver.run_spec import RunSpec
from agentserver.runtime import build_embedded
from agentserver.services.runs import RunRequest
from agentserver.settings import Settings
from agentserver.storage.base import Claimed, RunEnd
from agentserver.utils import loads
from agentserver.worker import Worker
from agentserver.worker.job import Job
from agentserver.worker.webhook import webhook_body
from tests.harness import TEST_GRAPHS


async def _runtime(tmp_path):
    cfg = load_config(TEST_GRAPHS)
    apply_env(cfg)
    graphs = await GraphRegistry.afrom_config(cfg)
    rt = build_embedded(Settings(bg_job_sweep_secs=0.2), graphs, tmp_path / "data")
    rt.run_jobs = False  # the test starts the worker itself
    await rt.start()
    return rt


def _worker(rt) -> Worker:
    return Worker(rt.storage, rt.broker, rt.graphs, rt.settings)


async def test_cancel_sent_before_the_claim_is_obeyed(tmp_path):
    rt = await _runtime(tmp_path)
    log = tmp_path / "steps.jsonl"
    try:
        created = await rt.services.runs.create(
            None, RunRequest(assistant_id="counter", input={"path": str(log)}, on_completion="keep")
        )
        run_id = created.run["run_id"]
        # the cancel reaches the broker while the run is still pending, but the storage is not
        # told (as when a worker claims it at that very moment)
        await rt.broker.send_control(run_id, "interrupt")
        worker = _worker(rt)
        await worker.start()
        try:
            for _ in range(100):
                run = await rt.storage.run_get(run_id)
                if run["status"] not in ("pending", "running"):
                    break
                await asyncio.sleep(0.05)
        finally:
            await worker.stop()
        assert run["status"] == "interrupted"
        assert not log.exists(), "the graph ran although the run was cancelled"
    finally:
        await rt.stop()


async def test_stop_execution_cancels_until_the_execution_stops(tmp_path):
    """LangGraph can sit waiting for a node task that missed the first cancellation; the job
    cancels again until the execution is gone."""
    rt = await _runtime(tmp_path)
    try:
        node_done = asyncio.Event()

        async def node():
            await asyncio.sleep(30)
            node_done.set()

        async def execution():
            inner = asyncio.ensure_future(node())
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.wait({inner})  # like an executor waiting for its tasks on exit

        job = Job(_worker(rt), Claimed(run={"run_id": "r", "thread_id": "t"}, lease_id="l", attempt=1))
        job.exec_task = asyncio.ensure_future(execution())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(job._stop_execution(), 5)
        assert job.exec_task.cancelled() and not node_done.is_set()
    finally:
        await rt.stop()


def test_webhook_body_carries_the_stored_kwargs():
    """The webhook receives the run as stored: its `kwargs` are the spec's JSON, unchanged."""
    kwargs = RunSpec(config={"configurable": {"thread_id": "t"}}, input={"x": 1}, webhook="http://h/").to_json()
    run = {"run_id": "r", "thread_id": "t", "assistant_id": "a", "metadata": {}, "kwargs": kwargs,
           "multitask_strategy": "enqueue", "created_at": "2025-01-01T00:00:00+00:00"}
    end = RunEnd(status="error", error={"error": "E", "message": "m"})
    body = loads(webhook_body(run, RunSpec.from_json(kwargs), end, {"x": 2}))
    assert list(body)[:7] == ["run_id", "thread_id", "assistant_id", "metadata", "kwargs", "multitask_strategy", "created_at"]
    assert body["kwargs"] == kwargs
    assert (body["status"], body["values"], body["error"]) == ("error", {"x": 2}, {"error": "E", "message": "m"})
