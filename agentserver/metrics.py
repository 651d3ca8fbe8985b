"""Prometheus metrics of one process (scraped at GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS_ENDED = Counter("agentserver_runs_ended_total", "Runs this process ended, by final status", ["status"])
RUNS_REQUEUED = Counter(
    "agentserver_runs_requeued_total", "Runs this process put back in the queue (retriable failures)"
)
RUN_DURATION = Histogram(
    "agentserver_run_duration_seconds",
    "Time from claim to end of a run attempt",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
)
PICKUP_DELAY = Histogram(
    "agentserver_run_pickup_seconds",
    "Time from a run becoming available to its claim",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300),
)
JOBS_ACTIVE = Gauge("agentserver_jobs_active", "Runs executing in this process")
JOB_SLOTS = Gauge("agentserver_job_slots", "Job slots of this process (N_JOBS_PER_WORKER)")
