"""The worker in-process, on an embedded runtime: control signals around the claim."""

from __future__ import annotations

import asyncio

from agentserver.api.schemas.runs import RunCreate
from agentserver.config import apply_env, load_config
from agentserver.graphs import GraphRegistry
from agentserver.runtime import build_embedded
from agentserver.settings import Settings
from agentserver.worker import Worker
from tests.server import TEST_GRAPHS


async def _runtime(tmp_path):
    cfg = load_config(TEST_GRAPHS)
    apply_env(cfg)
    graphs = await GraphRegistry.afrom_config(cfg)
    rt = build_embedded(Settings(bg_job_sweep_secs=0.2), graphs, tmp_path / "data")
    rt.run_jobs = False  # the test starts the worker itself
    await rt.start()
    return rt


async def test_cancel_sent_before_the_claim_is_obeyed(tmp_path):
    rt = await _runtime(tmp_path)
    log = tmp_path / "steps.jsonl"
    try:
        created = await rt.services.runs.create(
            None, RunCreate(assistant_id="counter", input={"path": str(log)}, on_completion="keep")
        )
        run_id = created.run["run_id"]
        # the cancel reaches the broker while the run is still pending, but the storage is not
        # told (as when a worker claims it at that very moment)
        await rt.broker.send_control(run_id, "interrupt")
        worker = Worker(rt)
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
