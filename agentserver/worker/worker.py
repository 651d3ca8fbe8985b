"""The claim loop: slots, leases, heartbeats, wake-ups, graceful shutdown.

One `Worker` per process that executes runs. It holds `N_JOBS_PER_WORKER` slots and never claims
more runs than it has free slots. It wakes when the broker says runs are ready, when one of its
own jobs ends (a slot frees up), when a delayed run comes due, and on a slow safety sweep
(`BG_JOB_SWEEP_SECS`) that also reclaims runs whose worker died (expired leases).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Coroutine
from datetime import datetime

import structlog

from agentserver import metrics
from agentserver.broker.base import Broker
from agentserver.graphs import GraphRegistry
from agentserver.settings import Settings
from agentserver.storage.base import Claimed, Record, Storage
from agentserver.storage.rules import retries_exhausted_error
from agentserver.utils import dumps, now, uuid7
from agentserver.worker.job import Job
from agentserver.worker.loops import LoopPool

log = structlog.get_logger(__name__)


class Worker:
    """Executes runs from `storage`'s queue with `graphs`, publishing through `broker`."""

    def __init__(self, storage: Storage, broker: Broker, graphs: GraphRegistry, settings: Settings) -> None:
        self.storage = storage
        self.broker = broker
        self.graphs = graphs
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid7()[-8:]}"
        self.slots = self.settings.n_jobs_per_worker
        self.jobs: dict[str, Job] = {}  # lease_id -> job
        self._kick = asyncio.Event()
        self._stopping = False
        self._hurry = asyncio.Event()
        self._stop_task: asyncio.Task | None = None
        self.interrupted_on_stop = 0  # runs the shutdown cut off and put back in the queue
        self._tasks: list[asyncio.Task] = []
        self._chores: set[asyncio.Task] = set()  # webhooks in flight
        self.loops: LoopPool | None = None

    @property
    def max_attempts(self) -> int:
        return self.settings.bg_job_max_retries + 1

    async def start(self) -> None:
        if self.settings.bg_job_isolated_loops:
            self.loops = LoopPool(
                self.storage, self.broker, self.graphs, self.slots, pool_max_size=self.settings.postgres_pool_max_size
            )
            await self.loops.start()
        metrics.JOB_SLOTS.set(self.slots)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="worker-claim"),
            asyncio.create_task(self._wake_listener(), name="worker-wake"),
            asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat"),
        ]
        log.info(
            "worker started", worker_id=self.id, slots=self.slots, isolated_loops=self.settings.bg_job_isolated_loops
        )

    def kick(self) -> None:
        self._kick.set()

    def spawn(self, coro: Coroutine) -> None:
        """Run a background chore of a finished run (its webhook); cancelled by `stop`."""
        task = asyncio.create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def begin_stop(self) -> asyncio.Task:
        """Start the shutdown (stop claiming, drain) without waiting for it; idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name="worker-stop")
        return self._stop_task

    def hurry(self) -> None:
        """Cut the drain short: interrupt the running jobs now; they go back to the queue."""
        self._hurry.set()
        self.begin_stop()

    async def stop(self) -> None:
        """Stop claiming; give running jobs BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS to finish (or until
        `hurry`), then interrupt the rest and put them back in the queue for another worker (or
        this one's next start)."""
        await asyncio.shield(self.begin_stop())

    async def _stop(self) -> None:
        self._stopping = True
        self._kick.set()
        claim = self._tasks[0] if self._tasks else None
        if claim is not None:
            claim.cancel()
            await asyncio.gather(claim, return_exceptions=True)
        running = [job.task for job in self.jobs.values() if job.task is not None]
        grace = self.settings.bg_job_shutdown_grace_period_secs
        if running and not self._hurry.is_set():
            log.info(
                f"shutting down: waiting up to {grace}s for {len(running)} running run(s) to finish "
                "(signal again to stop now; unfinished runs go back to the queue)",
                count=len(running),
                grace_secs=grace,
            )
            hurry = asyncio.create_task(self._hurry.wait())
            pending = set(running)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while pending and not self._hurry.is_set() and loop.time() < deadline:
                _, pending = await asyncio.wait(
                    pending | {hurry}, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(hurry)
            hurry.cancel()
        else:
            log.info("shutting down", running=len(running))
        unfinished = [(job, job.task) for job in self.jobs.values() if job.task is not None and not job.task.done()]
        self.interrupted_on_stop = len(unfinished)
        if unfinished:
            log.info(
                f"putting {len(unfinished)} unfinished run(s) back in the queue",
                run_ids=[job.run_id for job, _ in unfinished],
            )
            for job, _ in unfinished:
                job.abort("shutdown")
            await asyncio.gather(*(task for _, task in unfinished), return_exceptions=True)
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        if self.loops is not None:
            await self.loops.stop()
        for task in list(self._chores):
            task.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)

    # ---- loops -----------------------------------------------------------------------------
    async def _wake_listener(self) -> None:
        broker = self.broker
        while True:
            try:
                if await broker.wait_for_wake(self.settings.bg_job_sweep_secs):
                    self._kick.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker outage: the sweep still runs
                log.warning("wake-up listener failed", error=repr(exc))
                await asyncio.sleep(0.5)

    async def _claim_loop(self) -> None:
        """Claim runs whenever a wake-up, a finished job or a timer says some may be ready.

        Wake-ups are events (a run created, requeued, or due after a delay: see
        `Broker.wake_workers`); every BG_JOB_SWEEP_SECS a sweep also fails runs out of attempts
        and asks the storage for the next delayed run, in case its timed wake-up was lost."""
        storage = self.storage
        last_sweep = 0.0
        due: datetime | None = None  # the next delayed run, as of the last sweep
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._kick.clear()
            timeout = self.settings.bg_job_sweep_secs
            try:
                free = self.slots - len(self.jobs)
                if free > 0:
                    claimed = await storage.claim_runs(
                        self.id, free, self.settings.bg_job_lease_secs, self.max_attempts
                    )
                    for c in claimed:
                        self._start_job(c)
                    if len(claimed) == free:
                        continue  # maybe more waiting; claim again once slots free up
                if loop.time() - last_sweep >= self.settings.bg_job_sweep_secs:
                    last_sweep = loop.time()
                    for run in await storage.fail_exhausted(self.max_attempts):
                        await self._announce_exhausted(run)
                    due = await storage.next_wakeup()
                if due is not None:
                    wait = (due - now()).total_seconds()
                    if wait <= 0:
                        due = None  # claimed above, or by another worker; the next sweep looks again
                    timeout = max(0.0, min(timeout, wait))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - storage outage: back off and retry
                log.warning("claim failed", error=repr(exc))
                timeout = 0.5
            try:
                await asyncio.wait_for(self._kick.wait(), timeout)
            except TimeoutError:
                pass

    def _start_job(self, claimed: Claimed) -> None:
        available = claimed.run.get("available_at")
        if available is not None and claimed.attempt == 1:
            metrics.PICKUP_DELAY.observe(max(0.0, (now() - available).total_seconds()))
        metrics.JOBS_ACTIVE.inc()
        job = Job(self, claimed)
        self.jobs[claimed.lease_id] = job
        lease_id = claimed.lease_id
        job.task = asyncio.create_task(job.run(), name=f"run-{claimed.run['run_id']}")
        job.task.add_done_callback(lambda _task: self._job_done(lease_id))

    def _job_done(self, lease_id: str) -> None:
        if self.jobs.pop(lease_id, None) is not None:
            metrics.JOBS_ACTIVE.dec()
        self._kick.set()

    async def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.settings.bg_job_lease_secs / 3)
        while True:
            await asyncio.sleep(interval)
            leases = list(self.jobs)
            if not leases:
                continue
            try:
                lost = await self.storage.renew_leases(self.id, leases, self.settings.bg_job_lease_secs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried next beat; lease outlives one miss
                log.warning("lease renewal failed", error=repr(exc))
                continue
            for lease_id in lost:
                job = self.jobs.get(lease_id)
                if job is not None:
                    log.warning("lease lost; abandoning run", run_id=job.run_id)
                    job.abort("lost_lease")

    async def _announce_exhausted(self, run: Record) -> None:
        """A run whose lease expired on its last attempt was failed by the sweep: tell its
        subscribers."""
        error = retries_exhausted_error(run["run_id"], run.get("attempt") or self.max_attempts, self.max_attempts)
        await self.broker.publish(run["run_id"], "error", dumps(error))
        await self.broker.announce_end(run["run_id"], run["thread_id"], "error", error=error)
