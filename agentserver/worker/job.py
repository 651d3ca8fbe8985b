"""One claimed run, from claim to end: control signals, timeout, retries, the run's end."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from agentserver import metrics
from agentserver.errors import GraphLoadError, Unavailable
from agentserver.run_spec import RunSpec
from agentserver.storage.base import Claimed, RunEnd
from agentserver.storage.errors import is_backend_unavailable
from agentserver.storage.rules import retries_exhausted_error
from agentserver.utils import dumps
from agentserver.wire import error_payload, values_with_interrupts
from agentserver.worker.execution import execute, read_final_state
from agentserver.worker.webhook import send_webhook

if TYPE_CHECKING:
    from agentserver.worker.worker import Worker

log = structlog.get_logger(__name__)

RECANCEL_SECS = 0.5


class Job:
    def __init__(self, worker: Worker, claimed: Claimed) -> None:
        self.worker = worker
        self.run_record = claimed.run
        self.spec = RunSpec.from_json(claimed.run.get("kwargs"))
        self.run_id: str = claimed.run["run_id"]
        self.thread_id: str = claimed.run["thread_id"]
        self.lease_id = claimed.lease_id
        self.attempt = claimed.attempt
        self.task: asyncio.Task | None = None
        self.exec_task: asyncio.Future | None = None
        self.abort_reason: str | None = None  # interrupt | rollback | lost_lease | shutdown
        self._aborted: asyncio.Future = asyncio.get_running_loop().create_future()

    # ---- control ---------------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        """Stop executing the graph; `run()` then ends the run according to `reason`."""
        if self.abort_reason in ("lost_lease",):
            return
        self.abort_reason = reason
        if not self._aborted.done():
            self._aborted.set_result(reason)
        if self.exec_task is not None and not self.exec_task.done():
            self.exec_task.cancel()

    def _on_control(self, action: str) -> None:
        self.abort("rollback" if action == "rollback" else "interrupt")

    # ---- the run ---------------------------------------------------------------------------
    async def run(self) -> None:
        with metrics.RUN_DURATION.time():
            await self._run()

    async def _run(self) -> None:
        broker = self.worker.broker
        log_ = log.bind(run_id=self.run_id, thread_id=self.thread_id, attempt=self.attempt)
        unwatch = None
        outcome: tuple[str, Any] = ("success", None)
        try:
            # a cancel sent before the claim is delivered at once by watch_control
            unwatch = await broker.watch_control(self.run_id, self._on_control)
            await broker.notify_thread(self.thread_id, self.run_id, "started")
            if self.abort_reason is None:
                self.exec_task = self._start_execution()
                if await self._supervise():
                    outcome = ("timeout", None)
        except asyncio.CancelledError:
            # the job task itself was cancelled (shutdown past the grace period)
            if self.exec_task is not None:
                await self._stop_execution()
            if self.abort_reason is None:
                self.abort_reason = "shutdown"
        except Exception as exc:  # noqa: BLE001 - every failure ends the run
            outcome = ("error", exc)
        finally:
            if unwatch is not None:
                try:
                    await unwatch()
                except Exception:  # noqa: BLE001
                    pass
        if outcome[0] == "success" and self.exec_task is not None and self.exec_task.done():
            if self.exec_task.cancelled():
                self.abort_reason = self.abort_reason or "shutdown"
            elif self.exec_task.exception() is not None:
                outcome = ("error", self.exec_task.exception())
        try:
            await asyncio.shield(self._end(outcome, log_))
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - the lease expires and another worker retries
            log_.error("could not record the end of the run", error=repr(exc))

    async def _supervise(self) -> bool:
        """Wait for the graph to finish; True if BG_JOB_TIMEOUT_SECS ran out first. Once the run
        is aborted or timed out, the execution is stopped with `_stop_execution`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.worker.settings.bg_job_timeout_secs
        task = self.exec_task
        assert task is not None
        while not task.done() and self.abort_reason is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                await self._stop_execution()
                return True
            await asyncio.wait({task, self._aborted}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await self._stop_execution()
        return False

    async def _stop_execution(self) -> None:
        """Cancel the execution until it stops. One cancellation is not always enough: LangGraph
        can be left waiting for a node task that the first one missed."""
        task = self.exec_task
        assert task is not None
        attempts = 0
        while not task.done():
            if attempts:
                log.info("execution still running after a cancel; cancelling again", run_id=self.run_id)
            task.cancel()
            attempts += 1
            await asyncio.wait({task}, timeout=RECANCEL_SECS)

    def _start_execution(self) -> asyncio.Future:
        worker = self.worker
        if worker.loops is not None:
            return worker.loops.submit(self.run_record, self.spec, self.attempt)
        storage = worker.storage
        return asyncio.ensure_future(
            execute(
                worker.graphs,
                self.run_record,
                self.spec,
                self.attempt,
                worker.broker.publish,
                checkpointer=storage.checkpointer,
                store=storage.store,
            )
        )

    async def _final_state(self, failure: BaseException | None, log_) -> tuple[Any, dict | None, bool]:
        """The thread's state after the run, read through its graph. When the graph cannot be
        built (a factory that raises: the run never started; `failure` says so already, or the
        read finds out), the thread's state is left as it is; Postgres or Redis unreachable
        propagates (the run's lease runs out and it is retried)."""
        if isinstance(failure, GraphLoadError):
            return None, None, False
        try:
            return await read_final_state(self.worker.graphs, self.worker.storage, self.spec)
        except GraphLoadError as exc:
            log_.debug("thread state left as is: the graph cannot be built", error=str(exc))
            return None, None, False

    async def _end(self, outcome: tuple[str, Any], log_) -> None:
        worker = self.worker
        storage, broker = worker.storage, worker.broker
        kind, exc = outcome
        reason = self.abort_reason
        if reason == "lost_lease":
            log_.warning("lease lost: another worker owns this run now")
            return
        # Retries are for what is transient (a shutdown past its grace period, Postgres or Redis
        # unreachable); a graph that fails to build or raises fails on its first attempt.
        retriable = reason == "shutdown" or (
            kind == "error" and (isinstance(exc, Unavailable) or is_backend_unavailable(exc))
        )
        if retriable and self.attempt < worker.max_attempts:
            log_.info("requeueing run", reason=reason or repr(exc))
            delay = 0.0 if reason == "shutdown" else 0.5
            await storage.run_requeue(self.run_id, self.lease_id, delay_secs=delay)
            metrics.RUNS_REQUEUED.inc()
            await broker.wake_workers(at=time.time() + delay if delay else None)
            return

        if reason == "rollback":
            await storage.checkpointer.adelete_for_runs([self.run_id])
        values, interrupts, has_next = await self._final_state(exc, log_)
        await storage.checkpoint_barrier()
        error = None
        if reason in ("interrupt", "rollback"):
            end = RunEnd(
                status="interrupted",
                values=values,
                interrupts=interrupts,
                thread_status="interrupted" if has_next else "idle",
                delete_run=reason == "rollback",
            )
        elif kind == "timeout" or kind == "error" or retriable:
            if kind == "timeout":
                error = {
                    "error": "TimeoutError",
                    "message": f"Run timed out after {worker.settings.bg_job_timeout_secs:g}s",
                }
            elif exc is not None:
                error = error_payload(exc)
            else:  # shut down once too often
                error = retries_exhausted_error(self.run_id, self.attempt, worker.max_attempts)
            log_.error("run failed", error_type=error["error"], error=error["message"])
            if exc is not None:
                log_.debug("run failed: traceback", exc_info=exc)
            await broker.publish(self.run_id, "error", dumps(error))
            end = RunEnd(
                status="timeout" if kind == "timeout" else "error",
                values=values,
                interrupts=interrupts,
                thread_status="error",
                error=error,
            )
        else:
            end = RunEnd(
                status="success",
                values=values,
                interrupts=interrupts,
                thread_status="interrupted" if has_next else "idle",
            )
        if not await storage.run_finish(self.run_id, self.lease_id, end):
            log_.warning("lease lost before the run's end was recorded")
            return
        log_.info("run ended", status=end.status)
        metrics.RUNS_ENDED.labels(end.status).inc()
        result_values = values_with_interrupts(values, interrupts)
        await broker.announce_end(self.run_id, self.thread_id, end.status, values=result_values, error=error)
        if self.spec.temporary:
            try:
                await storage.thread_purge(self.thread_id)
            except Exception as purge_error:  # noqa: BLE001 - the TTL sweeper is not involved; log, go on
                log_.warning("could not delete temporary thread", error=repr(purge_error))
        if self.spec.webhook:
            worker.spawn(send_webhook(worker.settings, self.run_record, self.spec, end, result_values))
