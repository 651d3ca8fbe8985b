"""Every setting of the server, parsed once from the environment, typed and documented.

`docs/configuration.md` lists the same variables; keep the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace


class SettingsError(ValueError):
    pass


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if lo is not None and value < lo:
        raise SettingsError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise SettingsError(f"{name} must be <= {hi}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, lo: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < lo:
        raise SettingsError(f"{name} must be >= {lo}, got {value}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")


def _log_level(env: Mapping[str, str]) -> str:
    raw = env.get("LOG_LEVEL")
    if raw is None or raw.strip() == "":
        return "INFO"
    value = raw.strip().upper()
    if value not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {raw!r}")
    return "WARNING" if value == "WARN" else value


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class Settings:
    # queue / worker
    n_jobs_per_worker: int = 10
    bg_job_timeout_secs: float = 86400.0
    bg_job_max_retries: int = 3
    bg_job_shutdown_grace_period_secs: int = 180
    bg_job_isolated_loops: bool = False
    bg_job_lease_secs: float = 6.0
    bg_job_sweep_secs: float = 2.0
    queue_enabled: bool = False
    # streams
    resumable_stream_ttl_seconds: int = 120
    stream_heartbeat_secs: float = 5.0
    # postgres
    postgres_uri: str | None = None
    postgres_pool_max_size: int = 150
    # redis
    redis_uri: str | None = None
    redis_key_prefix: str = ""
    redis_max_connections: int = 2000
    redis_cluster: bool = False
    # http
    cors_allow_origins: tuple[str, ...] = ("*",)
    mount_prefix: str = ""
    # ttl sweeper
    thread_ttl_sweep_secs: float = 60.0
    startup_wait_secs: float = 60.0
    # logging
    log_level: str = "INFO"
    log_json: bool = False
    log_color: bool = True
    # webhooks
    webhook_timeout_secs: float = 10.0
    webhook_max_retries: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        origins = env.get("CORS_ALLOW_ORIGINS", "*").strip() or "*"
        prefix = env.get("MOUNT_PREFIX", "").strip().rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise SettingsError(f"MOUNT_PREFIX must start with '/', got {prefix!r}")
        return cls(
            n_jobs_per_worker=_int(env, "N_JOBS_PER_WORKER", 10, lo=1),
            bg_job_timeout_secs=_float(env, "BG_JOB_TIMEOUT_SECS", 86400.0, lo=0.001),
            bg_job_max_retries=_int(env, "BG_JOB_MAX_RETRIES", 3, lo=0),
            bg_job_shutdown_grace_period_secs=_int(env, "BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS", 180, lo=0, hi=3600),
            bg_job_isolated_loops=_bool(env, "BG_JOB_ISOLATED_LOOPS", False),
            bg_job_lease_secs=_float(env, "BG_JOB_LEASE_SECS", 6.0, lo=0.5),
            bg_job_sweep_secs=_float(env, "BG_JOB_SWEEP_SECS", 2.0, lo=0.05),
            queue_enabled=_bool(env, "QUEUE_ENABLED", False),
            resumable_stream_ttl_seconds=_int(env, "RESUMABLE_STREAM_TTL_SECONDS", 120, lo=1),
            stream_heartbeat_secs=_float(env, "STREAM_HEARTBEAT_SECS", 5.0, lo=0.05),
            postgres_uri=_first(env, "POSTGRES_URI_CUSTOM", "DATABASE_URI", "POSTGRES_URI"),
            postgres_pool_max_size=_int(env, "LANGGRAPH_POSTGRES_POOL_MAX_SIZE", 150, lo=1),
            redis_uri=_first(env, "REDIS_URI_CUSTOM", "REDIS_URI"),
            redis_key_prefix=env.get("REDIS_KEY_PREFIX", ""),
            redis_max_connections=_int(env, "REDIS_MAX_CONNECTIONS", 2000, lo=1),
            redis_cluster=_bool(env, "REDIS_CLUSTER", False),
            cors_allow_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
            mount_prefix=prefix,
            thread_ttl_sweep_secs=_float(env, "THREAD_TTL_SWEEP_SECS", 60.0, lo=0.1),
            startup_wait_secs=_float(env, "STARTUP_WAIT_SECS", 60.0),
            log_level=_log_level(env),
            log_json=_bool(env, "LOG_JSON", False),
            log_color=_bool(env, "LOG_COLOR", True),
            webhook_timeout_secs=_float(env, "WEBHOOK_TIMEOUT_SECS", 10.0, lo=0.1),
            webhook_max_retries=_int(env, "WEBHOOK_MAX_RETRIES", 3, lo=0),
        )

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)


# Variables of the official server's reference that this server does not implement: a start-up
# warning names each one that is set. Remove an entry when it gets implemented.
NOT_IMPLEMENTED_ENV = {
    "DD_API_KEY": "Datadog tracing (ddtrace-run)",
    "LS_APM_OTEL_ENABLED": "OpenTelemetry APM tracing",
    "LS_CHECKPOINT_DELETE": "deferred checkpoint deletion",
    "LS_DEFAULT_CHECKPOINTER_BACKEND": "checkpointer backends",
    "LS_MONGODB_URI": "the MongoDB checkpointer",
}

# Variables that only the scaled shape reads: `agentserver dev` keeps everything in --data-dir.
SCALED_ONLY_ENV = (
    "POSTGRES_URI_CUSTOM",
    "DATABASE_URI",
    "POSTGRES_URI",
    "LANGGRAPH_POSTGRES_POOL_MAX_SIZE",
    "REDIS_URI_CUSTOM",
    "REDIS_URI",
    "REDIS_KEY_PREFIX",
    "REDIS_MAX_CONNECTIONS",
    "REDIS_CLUSTER",
    "QUEUE_ENABLED",
    "STARTUP_WAIT_SECS",
)


def ignored_env(env: Mapping[str, str], shape: str) -> list[str]:
    """One warning line per group of set variables that this process ignores (`shape` is
    "embedded" or "scaled")."""
    lines = []
    unsupported = [f"{name} ({what})" for name, what in NOT_IMPLEMENTED_ENV.items() if env.get(name)]
    if unsupported:
        lines.append("not implemented by agentserver, ignored: " + ", ".join(unsupported))
    if shape == "embedded":
        scaled = [name for name in SCALED_ONLY_ENV if env.get(name)]
        if scaled:
            lines.append(
                "ignored by `agentserver dev` (state stays in --data-dir; these are for "
                "`agentserver serve`/`worker`): " + ", ".join(scaled)
            )
    return lines


def default_langsmith_tracing(env: os._Environ[str] | dict[str, str]) -> bool:
    """As in the official server, LANGSMITH_TRACING defaults to true: with LANGSMITH_API_KEY set
    and no LANGSMITH_TRACING (nor its LANGCHAIN_ aliases), runs are traced to LangSmith
    (LANGSMITH_ENDPOINT). Sets the variable for the LangChain tracer; True if it did."""
    if not env.get("LANGSMITH_API_KEY"):
        return False
    if any(env.get(name) for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING")):
        return False
    env["LANGSMITH_TRACING"] = "true"
    return True
