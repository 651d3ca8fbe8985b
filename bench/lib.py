"""Shared machinery of the benchmarks: a cheap HTTP/1.1 load generator, server launchers, tables.

The load generator talks raw HTTP/1.1 over keep-alive connections opened with
`asyncio.open_connection` (uvloop when available): requests are built by hand, responses parsed
just enough to find their end (Content-Length or chunked), so one core drives tens of thousands of
requests per second and the server under test, not the client, is what gets measured
(`bench/compare.py` measures the generator alone against a trivial server first).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness import TEST_GRAPHS, agentserver_args, free_port  # noqa: E402 - the harness the tests use

OFFICIAL_VENV = Path(os.environ.get("BENCH_OFFICIAL_VENV", "/tmp/official"))

perf = time.perf_counter


# ----------------------------------------------------------------------------------------------
# HTTP/1.1 client


class HTTPError(Exception):
    def __init__(self, status: int, body: bytes, what: str = "") -> None:
        super().__init__(f"{what} -> HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """One keep-alive HTTP/1.1 connection. Not safe for concurrent use: one request at a time."""

    __slots__ = ("host", "port", "reader", "writer", "_host_line")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._host_line = f"Host: {host}:{port}\r\n".encode()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.reader = self.writer = None

    def _build(self, method: str, path: str, body: bytes | None, headers: Sequence[tuple[str, str]]) -> bytes:
        parts = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_line]
        for k, v in headers:
            parts.append(f"{k}: {v}\r\n".encode())
        if body is not None:
            parts.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
            parts.append(body)
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    async def _send(self, method: str, path: str, body: bytes | None, headers) -> tuple[int, dict[str, str]]:
        if self.reader is not None and self.reader.at_eof():
            self.close()  # the server closed it while idle (keep-alive timeout): a new one, as clients do
        if self.writer is None:
            await self.open()
        assert self.writer is not None and self.reader is not None
        self.writer.write(self._build(method, path, body, headers))
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise ConnectionError(f"connection closed before a response to {method} {path}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0][9:12])
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        return status, hdrs

    async def _chunks(self, hdrs: dict[str, str]) -> AsyncIterator[bytes]:
        reader = self.reader
        assert reader is not None
        if "chunked" in hdrs.get("transfer-encoding", ""):
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("connection closed inside a chunked body")
                size = int(line.split(b";", 1)[0], 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                data = await reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in hdrs:
            n = int(hdrs["content-length"])
            if n:
                yield await reader.readexactly(n)
        else:  # body delimited by the end of the connection
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                yield data
            self.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        raw = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        status, hdrs = await self._send(method, path, raw, headers)
        chunks = [c async for c in self._chunks(hdrs)]
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return Response(status, hdrs, b"".join(chunks))

    async def stream(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[bytes]:
        """Send a request and yield its body as it arrives (raises HTTPError on a status >= 400)."""
        raw = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        status, hdrs = await self._send(method, path, raw, headers)
        if status >= 400:
            data = b"".join([c async for c in self._chunks(hdrs)])
            raise HTTPError(status, data, f"{method} {path}")
        async for chunk in self._chunks(hdrs):
            yield chunk
        if hdrs.get("connection", "").lower() == "close":
            self.close()

    async def sse(self, method: str, path: str, body: Any = None) -> AsyncIterator[tuple[str, bytes]]:
        """Yield (event name, data) for each Server-Sent Event frame of the response."""
        buf = b""
        async for chunk in self.stream(method, path, body, (("Accept", "text/event-stream"),)):
            buf += chunk
            while True:
                i = buf.find(b"\r\n\r\n")
                j = buf.find(b"\n\n")
                if i < 0 and j < 0:
                    break
                if i >= 0 and (j < 0 or i <= j):
                    frame, buf = buf[:i], buf[i + 4:]
                else:
                    frame, buf = buf[:j], buf[j + 2:]
                name = "message"
                data = b""
                for line in frame.splitlines():
                    if line.startswith(b"event:"):
                        name = line[6:].strip().decode()
                    elif line.startswith(b"data:"):
                        data = line[5:].strip()
                if frame.startswith(b":") and not data:
                    continue  # comment (heartbeat)
                yield name, data


def check(resp: Response, what: str) -> Response:
    if resp.status >= 400:
        raise HTTPError(resp.status, resp.body, what)
    return resp


class Pool:
    """A set of connections spread over one or more servers (round robin: no load balancer)."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.addrs = [_host_port(u) for u in urls]
        self._next = 0

    def conn(self) -> Conn:
        host, port = self.addrs[self._next % len(self.addrs)]
        self._next += 1
        return Conn(host, port)

    def conns(self, n: int) -> list[Conn]:
        return [self.conn() for _ in range(n)]


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host, int(port)


# ----------------------------------------------------------------------------------------------
# Statistics and load runners


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


@dataclass
class LoadResult:
    name: str
    count: int = 0  # operations completed inside the measuring window
    total: int = 0  # operations completed at any time (warm-up included)
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, of operations started in the window
    errors: int = 0
    first_error: str = ""
    units: int = 0  # extra per-op units (events received...) inside the window
    extra: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process group, in the window
    counters: dict[str, float] = field(default_factory=dict)  # counter increases over the window

    def per_op(self, counter: str) -> float | None:
        if counter not in self.counters or not self.count:
            return None
        return self.counters[counter] / self.count

    def cpu_ms_per_op(self, group: str = "server") -> float | None:
        if group not in self.cpu or not self.count:
            return None
        return self.cpu[group] / self.count * 1000.0

    def cpu_share(self, group: str = "server") -> float | None:
        """Cores' worth of CPU the group used on average in the window (1.0 = one core busy)."""
        if group not in self.cpu or not self.seconds:
            return None
        return self.cpu[group] / self.seconds

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def unit_rate(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return percentile(sorted(self.latencies), q) * 1000.0

    @property
    def p50(self) -> float:
        return self.p(50)

    @property
    def p99(self) -> float:
        return self.p(99)


def describe(r: LoadResult) -> str:
    """One line: rate, latency, CPU of each measured group, errors."""
    parts = [f"{r.rate:,.1f}/s p50 {r.p50:.1f} ms p99 {r.p99:.1f} ms"]
    for group in r.cpu:
        share = r.cpu_share(group)
        per_op = r.cpu_ms_per_op(group)
        parts.append(f"{group} {share:.2f} cores" + (f" ({per_op:.2f} ms CPU/op)" if per_op and group != "generator" else ""))
    if r.errors:
        parts.append(f"errors={r.errors} ({r.first_error})")
    return ", ".join(parts)


# An operation: `await op(conn, client_index, iteration)`; it raises on failure and may return a
# number of extra units (events received...), or a dict with "units" and other per-operation
# measurements (e.g. {"units": 100, "ttfe": 0.004}), collected in LoadResult.extra.
Op = Callable[[Conn, int, int], Awaitable[Any]]


def proc_tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and all their descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (ppid, cpu seconds)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        # fields[0] is field 3 (state): ppid = field 4, utime = 14, stime = 15
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted = set(pids)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    return sum(stats[p][1] for p in wanted if p in stats)


# A name -> the pids whose process trees it covers (CPU seconds), "self": this process (the
# generator) alone, or an async callable returning a counter (e.g. Postgres transactions), whose
# increase over the window lands in LoadResult.counters.
CpuGroups = dict[str, Any]


async def _group_value(spec: Any) -> float:
    if callable(spec):
        return float(await spec())
    return time.process_time() if spec == "self" else proc_tree_cpu(spec)


async def snapshot(groups: CpuGroups) -> dict[str, float]:
    """Each group's CPU seconds (or counter) now; subtract two snapshots for a span."""
    return {name: await _group_value(spec) for name, spec in groups.items()}


def span_result(name: str, count: int, seconds: float, groups: CpuGroups,
                c0: dict[str, float], c1: dict[str, float]) -> LoadResult:
    """A LoadResult for `count` operations over a span measured by two `snapshot`s."""
    res = LoadResult(name, count=count, seconds=seconds)
    for group, spec in groups.items():
        (res.counters if callable(spec) else res.cpu)[group] = c1[group] - c0[group]
    return res


async def _cpu_window(groups: CpuGroups, m0: float, m1: float, results: Sequence[LoadResult]) -> None:
    await asyncio.sleep(max(0.0, m0 - perf()))
    c0 = {name: await _group_value(spec) for name, spec in groups.items()}
    await asyncio.sleep(max(0.0, m1 - perf()))
    for name, spec in groups.items():
        used = await _group_value(spec) - c0[name]
        for res in results:
            (res.counters if callable(spec) else res.cpu)[name] = used


async def closed_loop(
    name: str,
    op: Op,
    conns: Sequence[Conn],
    *,
    duration: float,
    warmup: float = 1.0,
    max_errors: int = 1000,
    cpu: CpuGroups | None = None,
) -> LoadResult:
    """Each connection runs `op` back to back for warmup + duration seconds (one client each).

    Throughput counts the operations that finished inside the window; latencies are those of the
    operations that started inside it. With `cpu` ({group: pids}), the CPU time each group of
    processes (and their children) used inside the window is recorded too (`cpu_ms_per_op`)."""
    res = LoadResult(name, seconds=duration)
    start = perf()
    m0 = start + warmup
    m1 = m0 + duration
    stop = asyncio.Event()
    cpu_task = asyncio.create_task(_cpu_window(cpu, m0, m1, [res])) if cpu else None

    async def client(i: int, conn: Conn) -> None:
        k = 0
        while not stop.is_set():
            t0 = perf()
            if t0 >= m1:
                return
            try:
                units = await op(conn, i, k)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # count it, reconnect, go on
                conn.close()
                res.errors += 1
                if not res.first_error:
                    res.first_error = f"{type(exc).__name__}: {exc}"[:300]
                if res.errors >= max_errors:
                    stop.set()
                    return
                await asyncio.sleep(0.01)
                k += 1
                continue
            t1 = perf()
            extra = None
            if isinstance(units, dict):
                extra = units
                units = extra.pop("units", 0)
            res.total += 1
            if m0 <= t1 <= m1:
                res.count += 1
                if isinstance(units, (int, float)) and not isinstance(units, bool):
                    res.units += int(units)
            if t0 >= m0:
                res.latencies.append(t1 - t0)
                if extra:
                    for key, value in extra.items():
                        res.extra.setdefault(key, []).append(value)
            k += 1

    tasks = [asyncio.create_task(client(i, c)) for i, c in enumerate(conns)]
    try:
        await asyncio.gather(*tasks)
        if cpu_task is not None:
            await cpu_task
    finally:
        for t in tasks:
            t.cancel()
        if cpu_task is not None:
            cpu_task.cancel()
    return res


@dataclass
class RateStream:
    """One open-loop request stream: `rate` operations per second."""

    name: str
    rate: float
    op: Callable[[Conn, int], Awaitable[Any]]


async def open_loop(
    streams: Sequence[RateStream],
    pool: Pool,
    *,
    duration: float,
    warmup: float = 1.0,
    max_conns: int = 512,
    cpu: CpuGroups | None = None,
) -> dict[str, LoadResult]:
    """Send each stream's requests at its fixed rate, whatever the responses take (open loop).

    Latency is measured from the moment a request was due, so time spent waiting for a free
    connection counts (no coordinated omission). Connections come from one shared pool that grows
    up to `max_conns`."""
    results = {s.name: LoadResult(s.name, seconds=duration) for s in streams}
    idle: list[Conn] = []
    opened = 0
    freed = asyncio.Condition()
    start = perf()
    m0 = start + warmup
    m1 = m0 + duration
    inflight: set[asyncio.Task] = set()
    cpu_task = asyncio.create_task(_cpu_window(cpu, m0, m1, list(results.values()))) if cpu else None

    async def acquire() -> Conn:
        nonlocal opened
        async with freed:
            while True:
                if idle:
                    return idle.pop()
                if opened < max_conns:
                    opened += 1
                    return pool.conn()
                await freed.wait()

    async def release(conn: Conn) -> None:
        async with freed:
            idle.append(conn)
            freed.notify()

    async def one(s: RateStream, res: LoadResult, due: float, k: int) -> None:
        conn = await acquire()
        try:
            await s.op(conn, k)
            ok = True
        except Exception as exc:
            conn.close()
            ok = False
            res.errors += 1
            if not res.first_error:
                res.first_error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            await release(conn)
        t1 = perf()
        if ok:
            if m0 <= t1 <= m1:
                res.count += 1
            if due >= m0:
                res.latencies.append(t1 - due)

    async def scheduler(s: RateStream) -> None:
        res = results[s.name]
        interval = 1.0 / s.rate
        k = 0
        while True:
            due = start + k * interval
            if due >= m1:
                return
            now = perf()
            if due > now:
                await asyncio.sleep(due - now)
            t = asyncio.create_task(one(s, res, due, k))
            inflight.add(t)
            t.add_done_callback(inflight.discard)
            k += 1

    await asyncio.gather(*(scheduler(s) for s in streams))
    if cpu_task is not None:
        await cpu_task
    # let in-flight requests finish (they count for latency, not for the window's throughput)
    if inflight:
        await asyncio.wait(list(inflight), timeout=30)
    for t in list(inflight):
        t.cancel()
    for c in idle:
        c.close()
    for res in results.values():
        res.extra["connections"] = opened
    return results


async def run_many(conns: Sequence[Conn], items: Sequence[Any], fn: Callable[[Conn, Any], Awaitable[Any]]) -> list[Any]:
    """Apply `fn(conn, item)` to every item, len(conns) at a time; results in item order."""
    out: list[Any] = [None] * len(items)
    it = iter(range(len(items)))

    async def worker(conn: Conn) -> None:
        for idx in it:
            out[idx] = await fn(conn, items[idx])

    await asyncio.gather(*(worker(c) for c in conns))
    return out


async def create_threads(conns: Sequence[Conn], n: int, metadata: dict | None = None) -> list[str]:
    body = json.dumps({"metadata": metadata or {}}).encode()

    async def one(conn: Conn, _: int) -> str:
        return check(await conn.request("POST", "/threads", body), "POST /threads").json()["thread_id"]

    return await run_many(conns, range(n), one)


# ----------------------------------------------------------------------------------------------
# Operations (each returns an Op for closed_loop)


def op_create_thread(metadata: dict | None = None) -> Op:
    body = json.dumps({"metadata": metadata or {}}).encode()

    async def op(conn: Conn, i: int, k: int) -> None:
        check(await conn.request("POST", "/threads", body), "POST /threads")

    return op


def op_get_thread(thread_ids: Sequence[str]) -> Op:
    rng = random.Random(11)
    paths = [f"/threads/{t}" for t in thread_ids]

    async def op(conn: Conn, i: int, k: int) -> None:
        check(await conn.request("GET", paths[rng.randrange(len(paths))]), "GET /threads/{id}")

    return op


def op_get_state(thread_ids: Sequence[str]) -> Op:
    rng = random.Random(13)
    paths = [f"/threads/{t}/state" for t in thread_ids]

    async def op(conn: Conn, i: int, k: int) -> None:
        check(await conn.request("GET", paths[rng.randrange(len(paths))]), "GET /threads/{id}/state")

    return op


def op_search_threads(body: dict | None = None) -> Op:
    raw = json.dumps(body if body is not None else {"limit": 10}).encode()

    async def op(conn: Conn, i: int, k: int) -> None:
        check(await conn.request("POST", "/threads/search", raw), "POST /threads/search")

    return op


def op_runs_wait(assistant_id: str, input: dict) -> Op:
    """A stateless run, waited for (`POST /runs/wait`)."""
    raw = json.dumps({"assistant_id": assistant_id, "input": input}).encode()

    async def op(conn: Conn, i: int, k: int) -> None:
        resp = check(await conn.request("POST", "/runs/wait", raw), "POST /runs/wait")
        if b"__error__" in resp.body:
            raise RuntimeError(f"run failed: {resp.body[:300]!r}")

    return op


class Cycle:
    """Hands out the items of a list one after the other to all clients (wrapping around)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)
        self.i = 0
        self.wrapped = False

    def next(self) -> Any:
        item = self.items[self.i]
        self.i += 1
        if self.i == len(self.items):
            self.i = 0
            self.wrapped = True
        return item


def op_fresh_thread_runs_wait(threads: Cycle, assistant_id: str, input: dict) -> Op:
    """A run waited for on a thread not used before (taken from a pre-created pool), so the
    thread's state does not grow from one run to the next."""
    raw = json.dumps({"assistant_id": assistant_id, "input": input}).encode()

    async def op(conn: Conn, i: int, k: int) -> None:
        path = f"/threads/{threads.next()}/runs/wait"
        resp = check(await conn.request("POST", path, raw), "POST /threads/{id}/runs/wait")
        if b"__error__" in resp.body:
            raise RuntimeError(f"run failed: {resp.body[:300]!r}")

    return op


def op_create_background_run(thread_ids: Sequence[str], assistant_id: str, input: dict) -> Op:
    """`POST /threads/{id}/runs` (a background run) on a thread picked at random."""
    rng = random.Random(17)
    raw = json.dumps({"assistant_id": assistant_id, "input": input}).encode()

    async def op(conn: Conn, i: int, k: int) -> None:
        path = f"/threads/{thread_ids[rng.randrange(len(thread_ids))]}/runs"
        check(await conn.request("POST", path, raw), "POST /threads/{id}/runs")

    return op


async def stream_run(conn: Conn, path: str, body: bytes) -> dict:
    """Stream one run; returns {"units": custom events received, "ttfe": seconds from the request
    to the first event that is not `metadata`}."""
    t0 = perf()
    ttfe = None
    n = 0
    async for name, data in conn.sse("POST", path, body):
        if name == "metadata":
            continue
        if ttfe is None:
            ttfe = perf() - t0
        if name == "error":
            raise RuntimeError(f"run failed: {data[:300]!r}")
        if name == "custom":
            n += 1
    if ttfe is None:
        raise RuntimeError(f"{path}: the stream ended without an event")
    return {"units": n, "ttfe": ttfe}


def op_stream_custom(n_events: int, thread_ids: Sequence[str] | None = None) -> Op:
    """Stream a `streamer` run writing `n_events` custom events (stateless, or on the client's
    own thread when thread_ids are given)."""
    raw = json.dumps(
        {"assistant_id": "streamer", "input": {"n": n_events}, "stream_mode": ["custom"]}
    ).encode()

    async def op(conn: Conn, i: int, k: int) -> dict:
        path = f"/threads/{thread_ids[i % len(thread_ids)]}/runs/stream" if thread_ids else "/runs/stream"
        out = await stream_run(conn, path, raw)
        if out["units"] != n_events:
            raise RuntimeError(f"expected {n_events} custom events, got {out['units']}")
        return out

    return op


# ----------------------------------------------------------------------------------------------
# Processes


def pin_self(cpus: str | None) -> None:
    """Pin this process (the load generator) to the given CPU list, e.g. "1"."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        return
    os.sched_setaffinity(0, _cpu_set(cpus))


def _cpu_set(cpus: str) -> set[int]:
    out: set[int] = set()
    for part in cpus.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


class Service:
    """A child process (a server under test), optionally pinned with `taskset -c <cpus>`."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        port: int | None,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
        cpus: str | None = None,
        health_path: str = "/ok",
    ) -> None:
        self.name = name
        self.args = args
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.cwd = str(cwd or ROOT)
        self.cpus = cpus
        self.health_path = health_path
        self.proc: subprocess.Popen | None = None
        self.cleanup_paths: list[Path] = []  # removed after the process stops (data directories)
        fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "Service":
        args = (["taskset", "-c", self.cpus] if self.cpus else []) + self.args
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            args, cwd=self.cwd, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        if self.port is None:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.health_path} within {timeout}s; log:\n{self.log()}")

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        self._stop(timeout)
        for path in self.cleanup_paths:
            shutil.rmtree(path, ignore_errors=True)
        self.cleanup_paths.clear()

    def _stop(self, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and any child it made
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Profile:
    """`py-spy record` of a server process while a test runs (collapsed stacks, `--format raw`).

    py-spy is not a dependency of the project: `pip install py-spy` into the venv to use it."""

    def __init__(self, pid: int, path: Path, rate: int = 250) -> None:
        self.pid = pid
        self.path = path
        self.rate = rate
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Profile":
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate), "--format", "raw",
             "--output", str(self.path), "--nonblocking", "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # attach before the load starts
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def profile_summary(path: Path, n: int = 25) -> str:
    """The top functions of a collapsed-stack profile by self and by inclusive samples."""
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return f"(no profile at {path})"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        frames = [f for f in frames if not f.startswith("thread (") and not f.startswith("process ")]
        if not frames:
            continue
        total += c
        self_[frames[-1]] = self_.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
    if not total:
        return f"(empty profile at {path})"
    out = [f"{path.name}: {total} samples", "  self%  function"]
    for f, c in sorted(self_.items(), key=lambda x: -x[1])[:n]:
        out.append(f"  {c / total * 100:5.1f}  {f}")
    out.append("  incl%  function (inclusive)")
    for f, c in sorted(incl.items(), key=lambda x: -x[1])[:n]:
        out.append(f"  {c / total * 100:5.1f}  {f}")
    return "\n".join(out)


def maybe_profile(svc: "Service", directory: str | None, name: str):
    """A Profile of `svc` written to DIRECTORY/NAME.txt (and its summary to NAME.summary.txt) when
    a directory is given, else a no-op context."""
    import contextlib

    if not directory or svc.proc is None:
        return contextlib.nullcontext()
    prof = Profile(svc.proc.pid, Path(directory) / f"{name}.txt")

    @contextlib.contextmanager
    def ctx():
        with prof:
            yield prof
        (Path(directory) / f"{name}.summary.txt").write_text(profile_summary(prof.path) + "\n")

    return ctx()


def our_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"LOG_LEVEL": "WARNING", "LOG_COLOR": "false", **(extra or {})}


def ours_dev(
    *, cpus: str | None = None, env: dict[str, str] | None = None, config: Path = TEST_GRAPHS,
    data_dir: Path | None = None,
) -> Service:
    port = free_port()
    owned = data_dir is None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="bench-data-"))
    args = agentserver_args("dev", config, port=port, data_dir=data_dir)
    svc = Service("agentserver-dev", args, port=port, env=our_env(env), cpus=cpus)
    if owned:
        svc.cleanup_paths.append(data_dir)
    return svc


def ours_serve(*, env: dict[str, str], cpus: str | None = None, config: Path = TEST_GRAPHS) -> Service:
    port = free_port()
    args = agentserver_args("serve", config, port=port)
    return Service("agentserver-serve", args, port=port, env=our_env(env), cpus=cpus)


def ours_worker(*, env: dict[str, str], cpus: str | None = None, config: Path = TEST_GRAPHS) -> Service:
    port = free_port()
    args = agentserver_args("worker", config, port=port)
    return Service("agentserver-worker", args, port=port, env=our_env(env), cpus=cpus)


def official_config(graphs: Sequence[str]) -> Path:
    """A langgraph.json for the official server naming our test graphs by absolute path, in a temp
    dir (the official `langgraph dev` keeps its in-memory state files in its working directory)."""
    d = Path(tempfile.mkdtemp(prefix="bench-official-"))
    cfg = {
        "dependencies": ["."],
        "graphs": {g: str(ROOT / "tests" / "graphs" / f"{g}.py") + ":graph" for g in graphs},
    }
    (d / "langgraph.json").write_text(json.dumps(cfg, indent=2))
    return d / "langgraph.json"


def official_dev(*, graphs: Sequence[str], cpus: str | None = None, n_jobs: int | None = None) -> Service:
    exe = OFFICIAL_VENV / "bin" / "langgraph"
    if not exe.exists():
        raise RuntimeError(
            f"{exe} not found: python -m venv {OFFICIAL_VENV} && "
            f"{OFFICIAL_VENV}/bin/pip install 'langgraph-cli[inmem]'"
        )
    cfg = official_config(graphs)
    port = free_port()
    args = [str(exe), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
            "--port", str(port), "--config", str(cfg), "--server-log-level", "WARNING"]
    if n_jobs is not None:
        args += ["--n-jobs-per-worker", str(n_jobs)]
    env = {
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LOG_LEVEL": "WARNING",
        "PATH": f"{OFFICIAL_VENV}/bin:" + os.environ.get("PATH", ""),
        "VIRTUAL_ENV": str(OFFICIAL_VENV),
    }
    # our venv's site-packages must not leak into the official server's interpreter
    env_all = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env_all.update(env)
    svc = Service("langgraph-dev", args, port=port, env=env, cwd=cfg.parent, cpus=cpus)
    svc.env = env_all
    svc.cleanup_paths.append(cfg.parent)  # its config and the state files it writes there
    return svc


# ----------------------------------------------------------------------------------------------
# Output


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = []
    if title:
        out.append(title)
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out.append(line)
    out.append("  ".join("-" * w for w in widths))
    for r in cells:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def use_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {cpu or 'unknown CPU'}, Python {sys.version.split()[0]}, "
            f"load average {loadavg()}")


def loadavg() -> str:
    """The 1-minute load average: other work on the machine skews the figures."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"
