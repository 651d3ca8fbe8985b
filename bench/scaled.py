"""The scaled shape: API servers and queue workers over Postgres and Redis.

    /work/venv/bin/python bench/scaled.py [--shapes 1x1,2x2] [--slots 100] [--duration 5]

Starts Postgres and Redis on free loopback ports (tests/harness/), applies the migrations
(`agentserver migrate`), then for each shape AxW (A API servers `agentserver serve`, W workers
`agentserver worker`, all with QUEUE_ENABLED=true; a fresh database and Redis key prefix each)
measures with `--clients` keep-alive connections spread round robin over the API servers
(no load balancer in between):

- reads: `GET /threads/{id}`, `POST /threads/search`, `GET /threads/{id}/state` (on 1,000
  threads, 500 of which have run the `echo` graph);
- writes: `POST /threads`, then background run creation `POST /threads/{id}/runs` (`echo`, on a
  thread picked at random; the workers execute them meanwhile; the queue is left to drain before
  the next test), and the same runs "created and executed": CPU per run from the start of the
  test until the queue has drained, and runs/s completed over that span (the closed-loop row
  alone undercounts the workers, which are still executing when its window ends);
- the 1-second graph (`sleeper`, secs=1): twice as many clients as slots call stateless
  `POST /runs/wait` back to back; completed runs/s against the ideal (W x N_JOBS_PER_WORKER
  runs/s);

and finally, on `--mixed-shape`, a mixed open-loop run: `--mixed-writes` writes/s
(`--mixed-run-fraction` of them `POST /threads/{id}/runs`, the rest `POST /threads`) and
`--mixed-reads` reads/s (a third each of the three reads) at once, over at most `--mixed-conns`
keep-alive connections, with the achieved rates and latencies (measured from when each request
was due, so a server falling behind shows in the latencies).

Nothing is pinned: Postgres, Redis, the servers and this generator share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import lib  # noqa: E402
from tests.harness import PostgresServer, RedisServer  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="1x1,2x2", help="API servers x workers, comma separated (default 1x1,2x2)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per test (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per test (default 1)")
    p.add_argument("--clients", type=int, default=32, help="concurrent connections (default 32)")
    p.add_argument("--slots", type=int, default=100, help="N_JOBS_PER_WORKER of each worker (default 100)")
    p.add_argument("--sleeper-duration", type=float, default=10.0, help="seconds measured for the 1-second graph")
    p.add_argument("--sleeper-warmup", type=float, default=4.0, help="seconds of warm-up for the 1-second graph")
    p.add_argument("--mixed-shape", default="2x1", help="shape of the mixed run (default 2x1; '' to skip it)")
    p.add_argument("--mixed-writes", type=float, default=500.0, help="writes/s of the mixed run (default 500)")
    p.add_argument("--mixed-reads", type=float, default=500.0, help="reads/s of the mixed run (default 500)")
    p.add_argument("--mixed-run-fraction", type=float, default=0.1,
                   help="share of the mixed writes that create a background run (default 0.1; the rest "
                        "are POST /threads)")
    p.add_argument("--mixed-conns", type=int, default=64,
                   help="most connections the mixed run keeps open (default 64, like a load balancer's keep-alive "
                        "pool to the API servers); requests beyond wait in the generator, counted in the latency")
    p.add_argument("--mixed-duration", type=float, default=10.0, help="seconds measured for the mixed run")
    p.add_argument("--profile", metavar="DIR",
                   help="record the first API server and the first worker with py-spy into DIR (skews the figures)")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="longest wait for the queue to drain between tests (default 300 s)")
    return p.parse_args(argv)


def _shape(text: str) -> tuple[int, int]:
    a, _, w = text.lower().partition("x")
    return int(a), int(w)


class Deployment:
    """A APIs + W workers over one database and one Redis key prefix."""

    def __init__(self, pg: PostgresServer, redis: RedisServer, apis: int, workers: int, slots: int) -> None:
        self.name = f"{apis}x{workers}"
        stamp = datetime.datetime.now().strftime("%H%M%S%f")
        self.db_uri = pg.create_database(f"bench_{self.name}_{stamp}")
        self.env = {
            "POSTGRES_URI_CUSTOM": self.db_uri,
            "REDIS_URI_CUSTOM": redis.uri,
            "REDIS_KEY_PREFIX": f"bench-{self.name}-{stamp}:",
            "QUEUE_ENABLED": "true",
            "N_JOBS_PER_WORKER": str(slots),
        }
        self.apis = [lib.ours_serve(env=self.env) for _ in range(apis)]
        self.workers = [lib.ours_worker(env=self.env) for _ in range(workers)]
        self.slots = slots
        self.pg = pg
        self.redis = redis

    def start(self) -> "Deployment":
        subprocess.run([sys.executable, "-m", "agentserver", "migrate"], cwd=lib.ROOT, check=True,
                       env={**os.environ, **lib.our_env(self.env)}, stdout=subprocess.DEVNULL)
        try:
            for svc in self.workers + self.apis:
                svc.start()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for svc in self.apis + self.workers:
            svc.stop()
    
    def cpu_groups(self) -> lib.CpuGroups:
        groups: lib.CpuGroups = {
            "api": [s.proc.pid for s in self.apis if s.proc],
            "workers": [s.proc.pid for s in self.workers if s.proc],
        }
        if self.pg.proc is not None:
            groups["postgres"] = [self.pg.proc.pid]
        if self.redis.proc is not None:
            groups["redis"] = [self.redis.proc.pid]
        groups["generator"] = "self"
        groups["pg_xacts"] = self.pg_xacts
        return groups

    async def pg_xacts(self) -> int:
        """Transactions committed or rolled back in the bench database so far (the servers use
        autocommit, so every statement outside an explicit transaction counts as one).
        Postgres publishes these counters with a delay of up to a second."""
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.db_uri, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            )
            row = await cur.fetchone()
            return int(row[0]) - 1  # less this query's own transaction

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.apis]

    async def inflight(self) -> int:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.db_uri, autocommit=True) as conn:
            cur = await conn.execute("SELECT count(*) FROM runs WHERE status IN ('pending', 'running')")
            row = await cur.fetchone()
            return int(row[0])

    async def drain(self, timeout: float) -> float:
        """Wait until no run is pending or running; returns the seconds it took."""
        t0 = lib.perf()
        while lib.perf() - t0 < timeout:
            if await self.inflight() == 0:
                return lib.perf() - t0
            await asyncio.sleep(0.25)
        raise RuntimeError(f"the queue did not drain within {timeout}s")


def profiled(dep: Deployment, directory: str | None, name: str) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if directory:
        stack.enter_context(lib.maybe_profile(dep.apis[0], directory, f"{dep.name}-{name}-api"))
        if dep.workers:
            stack.enter_context(lib.maybe_profile(dep.workers[0], directory, f"{dep.name}-{name}-worker"))
    return stack


def _print(name: str, r: lib.LoadResult, shape: str) -> None:
    print(f"[{shape}] {name}: {lib.describe(r)}", flush=True)


async def prepare(conns: list[lib.Conn]) -> tuple[list[str], list[str]]:
    ids = await lib.create_threads(conns, 1000, {"bench": "scaled"})
    with_state = ids[:500]
    body = json.dumps({"assistant_id": "echo", "input": {"value": 1}}).encode()

    async def run(conn: lib.Conn, tid: str) -> None:
        lib.check(await conn.request("POST", f"/threads/{tid}/runs/wait", body), "POST /threads/{id}/runs/wait")

    await lib.run_many(conns, with_state, run)
    return ids, with_state


async def shape_suite(args, pg, redis, apis: int, workers: int) -> dict[str, lib.LoadResult]:
    dep = Deployment(pg, redis, apis, workers, args.slots).start()
    shape = dep.name
    print(f"[{shape}] started {apis} API server(s) {dep.urls} and {workers} worker(s)", flush=True)
    res: dict[str, lib.LoadResult] = {}
    try:
        pool = lib.Pool(dep.urls)
        conns = pool.conns(args.clients)
        ids, with_state = await prepare(conns)
        d, w = args.duration, args.warmup
        for key, name, op in (
            ("get", "GET /threads/{id}", lib.op_get_thread(ids)),
            ("search", "POST /threads/search", lib.op_search_threads({"limit": 10})),
            ("state", "GET /threads/{id}/state", lib.op_get_state(with_state)),
            ("create", "POST /threads", lib.op_create_thread()),
            ("run", "POST /threads/{id}/runs (echo)", lib.op_create_background_run(ids, "echo", {"value": 1})),
        ):
            groups = dep.cpu_groups()
            t0, c0 = time.perf_counter(), await lib.snapshot(groups)
            with profiled(dep, args.profile, key):
                r = await lib.closed_loop(name, op, conns, duration=d, warmup=w, cpu=groups)
            res[key] = r
            _print(name, r, shape)
        took = await dep.drain(args.drain_timeout)
        print(f"[{shape}] queue drained {took:.1f}s after the run-creation test", flush=True)
        # the runs created above (warm-up included) have all been executed now: what each cost
        # from its creation to its end, and how many per second the deployment got through
        full = lib.span_result("runs created and executed", r.total, time.perf_counter() - t0, groups,
                               c0, await lib.snapshot(groups))
        res["run_done"] = full
        _print("POST /threads/{id}/runs (echo), created and executed", full, shape)
        for c in conns:
            c.close()
        total = workers * args.slots
        clients = max(2 * total, total + 16)
        with profiled(dep, args.profile, "sleeper"):
            r = await lib.closed_loop("sleeper", lib.op_runs_wait("sleeper", {"secs": 1}), pool.conns(clients),
                                      duration=args.sleeper_duration, warmup=args.sleeper_warmup,
                                      cpu=dep.cpu_groups())
        r.extra["ideal"] = float(total)
        r.extra["clients"] = clients
        res["sleeper"] = r
        print(f"[{shape}] sleeper 1s, {total} slots, {clients} clients: {r.rate / total * 100:.1f}% of {total} "
              f"ideal; {lib.describe(r)}", flush=True)
    finally:
        dep.stop()
    return res


async def mixed(args, pg, redis, apis: int, workers: int) -> dict[str, lib.LoadResult]:
    dep = Deployment(pg, redis, apis, workers, args.slots).start()
    shape = dep.name
    print(f"[{shape}] mixed: started {apis} API server(s) and {workers} worker(s)", flush=True)
    try:
        pool = lib.Pool(dep.urls)
        ids, with_state = await prepare(pool.conns(args.clients))
        c_thread = lib.op_create_thread()
        c_run = lib.op_create_background_run(ids, "echo", {"value": 1})
        r_get = lib.op_get_thread(ids)
        r_search = lib.op_search_threads({"limit": 10})
        r_state = lib.op_get_state(with_state)

        def adapt(op):
            return lambda conn, k: op(conn, 0, k)

        wr, rd = args.mixed_writes, args.mixed_reads
        streams = [s for s in [
            lib.RateStream("write: POST /threads", wr * (1 - args.mixed_run_fraction), adapt(c_thread)),
            lib.RateStream("write: POST /threads/{id}/runs", wr * args.mixed_run_fraction, adapt(c_run)),
            lib.RateStream("read: GET /threads/{id}", rd / 3, adapt(r_get)),
            lib.RateStream("read: POST /threads/search", rd / 3, adapt(r_search)),
            lib.RateStream("read: GET /threads/{id}/state", rd / 3, adapt(r_state)),
        ] if s.rate > 0]
        with profiled(dep, args.profile, "mixed"):
            out = await lib.open_loop(streams, pool, duration=args.mixed_duration, warmup=args.warmup,
                                      max_conns=args.mixed_conns, cpu=dep.cpu_groups())
        for name, r in out.items():
            note = f", errors={r.errors} ({r.first_error})" if r.errors else ""
            print(f"[{shape}] {name}: {r.rate:,.1f}/s p50 {r.p50:.1f} ms p99 {r.p99:.1f} ms{note}", flush=True)
        first = next(iter(out.values()))
        gen = first.cpu_share("generator")
        print(f"[{shape}] mixed: CPU in cores (api/workers/postgres/redis) {_cores(first)}, "
              f"generator {gen if gen is None else round(gen, 2)}", flush=True)
        return out
    finally:
        dep.stop()


GROUPS = ("api", "workers", "postgres", "redis")
CORES = "cores api/wrk/pg/redis"
PER_OP = "CPU ms/op api/wrk/pg/redis"


def _cores(r: lib.LoadResult) -> str:
    return "/".join(f"{r.cpu_share(g):.2f}" if r.cpu_share(g) is not None else "-" for g in GROUPS)


def _per_op(r: lib.LoadResult) -> str:
    return "/".join(f"{r.cpu_ms_per_op(g):.2f}" if r.cpu_ms_per_op(g) is not None else "-" for g in GROUPS)


def _combine(name: str, results: list[lib.LoadResult]) -> lib.LoadResult:
    out = lib.LoadResult(name, seconds=results[0].seconds)
    for r in results:
        out.count += r.count
        out.errors += r.errors
        out.latencies += r.latencies
        out.first_error = out.first_error or r.first_error
    return out


async def main(args: argparse.Namespace) -> None:
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')} — {lib.machine()}", flush=True)
    pg = PostgresServer().start()
    redis = RedisServer().start()
    print(f"postgres {pg.uri}, redis {redis.uri}", flush=True)
    try:
        shapes = [_shape(s) for s in args.shapes.split(",") if s.strip()]
        results = {}
        for a, w in shapes:
            results[f"{a}x{w}"] = await shape_suite(args, pg, redis, a, w)
        mixed_res = await mixed(args, pg, redis, *_shape(args.mixed_shape)) if args.mixed_shape else None
    finally:
        redis.cleanup()
        pg.cleanup()

    if results:
        print()
        print(_request_table(args, results))
        print()
        print(_sleeper_table(args, results))
    if mixed_res:
        print()
        print(_mixed_table(args, mixed_res))


def _request_table(args, results) -> str:
    rows = []
    labels = (("create", "write: POST /threads"), ("run", "write: POST /threads/{id}/runs"),
              ("run_done", "  the same runs, created and executed"),
              ("get", "read: GET /threads/{id}"), ("search", "read: POST /threads/search"),
              ("state", "read: GET /threads/{id}/state"))
    for shape, res in results.items():
        for key, label in labels:
            r = res[key]
            rows.append([f"{shape}  {label}", r.rate, r.p50, r.p99, _cores(r), _per_op(r), r.per_op("pg_xacts"),
                         r.errors])
    return lib.table(["shape  request (req/s)", "req/s", "p50 ms", "p99 ms", CORES, PER_OP, "pg xacts/op", "errors"],
                     rows,
                    title=f"Scaled shape (API x workers), {args.clients} clients round robin over the API "
                           f"servers, {args.duration:g}s per test")


def _sleeper_table(args, results) -> str:
    srows = []
    for shape, res in results.items():
        r = res["sleeper"]
        ideal = r.extra["ideal"]
        srows.append([f"{shape}: {int(ideal)} slots, {r.extra['clients']} clients", r.rate, ideal,
                      r.rate / ideal * 100, r.p50, r.p99, _cores(r), _per_op(r), r.per_op("pg_xacts"), r.errors])
    return lib.table(["sleeper secs=1", "runs/s", "ideal", "% ideal", "p50 ms", "p99 ms", CORES, PER_OP,
                      "pg xacts/run", "errors"],
                     srows,
                     title=f"1-second graph: N_JOBS_PER_WORKER={args.slots} per worker, stateless /runs/wait")


def _mixed_table(args, mixed_res) -> str:
    mrows = []
    writes = [r for n, r in mixed_res.items() if n.startswith("write")]
    reads = [r for n, r in mixed_res.items() if n.startswith("read")]
    for name, r in mixed_res.items():
        mrows.append([name, r.rate, r.p50, r.p99, r.errors])
    for label, group, target in (("all writes", writes, args.mixed_writes), ("all reads", reads, args.mixed_reads)):
        if group:
            c = _combine(label, group)
            mrows.append([f"{label} (asked {target:g}/s)", c.rate, c.p50, c.p99, c.errors])
    any_r = next(iter(mixed_res.values()))
    mrows.append([f"CPU, cores ({'/'.join(GROUPS)})", _cores(any_r), None, None, None])
    return lib.table(["mixed load", "achieved/s", "p50 ms", "p99 ms", "errors"], mrows,
                     title=f"Mixed open-loop load on {args.mixed_shape}: {args.mixed_writes:g} writes/s "
                           f"({args.mixed_run_fraction:.0%} of them run creations) + "
                           f"{args.mixed_reads:g} reads/s for {args.mixed_duration:g}s "
                           "(latency from when each request was due)")


if __name__ == "__main__":
    lib.use_uvloop()
    asyncio.run(main(parse_args()))
