"""Agent Server (`agentserver dev`) side by side with the official `langgraph dev`.

    /work/venv/bin/python bench/compare.py [--duration 5] [--clients 32] [--growth 10000,100000]

Each server is pinned to core 0 (`taskset -c 0`), this load generator to core 1; both servers run
the graphs of tests/graphs (the official one from a generated langgraph.json naming the same files).
The official server comes from a scratch virtualenv (default /tmp/official, or $BENCH_OFFICIAL_VENV):

    python -m venv /tmp/official && /tmp/official/bin/pip install "langgraph-cli[inmem]"

It measures, one after the other with `--clients` concurrent keep-alive connections:
`POST /threads`, `GET /threads/{id}` and `POST /threads/search` (on a database of 1,000 threads),
stateless `POST /runs/wait` on the one-node `echo` graph, a 10-step run (`steps`) on a fresh
thread, a run streaming 100 custom events (`streamer`: events/s and time to first event, under
load and alone), then growth: GET/search throughput on a fresh server filled to each `--growth`
size (the official server up to `--official-growth`). It first measures the load generator alone
against a trivial HTTP server, to show it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import lib  # noqa: E402

GRAPHS = ["echo", "steps", "sleeper", "streamer"]
SERVER_CPU = "0"
CLIENT_CPU = "1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per test (default 5)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per test (default 2)")
    p.add_argument("--clients", type=int, default=32, help="concurrent connections (default 32)")
    p.add_argument("--n-jobs", type=int, default=32,
                   help="N_JOBS_PER_WORKER of both servers (default 32: as many as clients)")
    p.add_argument("--events", type=int, default=100, help="custom events per streamed run (default 100)")
    p.add_argument("--ttfe-runs", type=int, default=100, help="sequential streamed runs for the unloaded "
                   "time to first event (default 100)")
    p.add_argument("--growth", default="10000,100000", help="database sizes (threads) for our server")
    p.add_argument("--official-growth", default="10000", help="database sizes for the official server")
    p.add_argument("--servers", default="ours,official", help="which servers to measure (default: ours,official)")
    p.add_argument("--skip-growth", action="store_true", help="leave out the growth tests")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and generator to cores")
    p.add_argument("--profile", metavar="DIR", help="record our server with py-spy into DIR (skews the figures)")
    return p.parse_args(argv)


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _server(kind: str, args: argparse.Namespace) -> lib.Service:
    cpus = None if args.no_pin else SERVER_CPU
    if kind == "ours":
        return lib.ours_dev(cpus=cpus, env={"N_JOBS_PER_WORKER": str(args.n_jobs)})
    return lib.official_dev(graphs=GRAPHS, cpus=cpus, n_jobs=args.n_jobs)


async def calibrate(args: argparse.Namespace) -> dict[str, lib.LoadResult]:
    """The load generator alone, against a trivial uvloop HTTP server on the server's core."""
    port = lib.free_port()
    svc = lib.Service("trivial", [sys.executable, str(lib.ROOT / "bench" / "trivial_server.py"), str(port)],
                      port=port, cpus=None if args.no_pin else SERVER_CPU)
    with svc:
        pool = lib.Pool([svc.url])
        out = {}
        cpu = {"server": [svc.proc.pid], "generator": "self"}
        out["GET"] = await lib.closed_loop("generator GET", lib.op_get_thread(["x"]), pool.conns(args.clients),
                                           duration=min(args.duration, 3), warmup=0.5, cpu=cpu)
        out["POST"] = await lib.closed_loop("generator POST", lib.op_create_thread(), pool.conns(args.clients),
                                            duration=min(args.duration, 3), warmup=0.5, cpu=cpu)
        return out


async def sequential_ttfe(conn: lib.Conn, runs: int, events: int) -> list[float]:
    op = lib.op_stream_custom(events)
    out = []
    for k in range(runs):
        r = await op(conn, 0, k)
        out.append(r["ttfe"])
    return out


async def suite(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The main tests against one fresh server."""
    res: dict[str, Any] = {}
    svc = _server(kind, args).start()
    print(f"[{kind}] started {svc.name} at {svc.url} (log {svc.log_path})", flush=True)
    try:
        pool = lib.Pool([svc.url])
        conns = pool.conns(args.clients)
        d, w = args.duration, args.warmup
        cpu = {"server": [svc.proc.pid], "generator": "self"}
        ids = await lib.create_threads(conns, 1000, {"bench": "base"})

        async def run(key: str, name: str, op: lib.Op) -> lib.LoadResult:
            with lib.maybe_profile(svc, args.profile if kind == "ours" else None, key):
                r = await lib.closed_loop(name, op, conns, duration=d, warmup=w, cpu=cpu)
            res[key] = r
            print(f"[{kind}] {name}: {lib.describe(r)}", flush=True)
            return r

        await run("get", "GET /threads/{id}", lib.op_get_thread(ids))
        await run("search", "POST /threads/search", lib.op_search_threads({"limit": 10}))
        await run("create", "POST /threads", lib.op_create_thread())
        await run("wait", "POST /runs/wait (echo)", lib.op_runs_wait("echo", {"value": 1}))
        pool_size = max(2000, args.clients * 10)
        fresh = lib.Cycle(await lib.create_threads(conns, pool_size))
        await run("steps", "10-step run (steps)", lib.op_fresh_thread_runs_wait(fresh, "steps", {}))
        if fresh.wrapped:
            print(f"[{kind}] note: the pool of {pool_size} fresh threads wrapped around", flush=True)
        r = await run("stream", f"stream {args.events} custom events", lib.op_stream_custom(args.events))
        print(f"[{kind}]   events/s {r.unit_rate:,.0f}, time to first event under load: "
              f"median {statistics.median(r.extra.get('ttfe', [float('nan')])) * 1000:.1f} ms", flush=True)
        ttfe = await sequential_ttfe(conns[0], args.ttfe_runs, args.events)
        res["ttfe_alone"] = sorted(ttfe)
        print(f"[{kind}]   time to first event alone: median {statistics.median(ttfe) * 1000:.1f} ms, "
              f"p99 {lib.percentile(sorted(ttfe), 99) * 1000:.1f} ms", flush=True)
        for c in conns:
            c.close()
    finally:
        svc.stop()
    return res


async def growth(kind: str, args: argparse.Namespace, sizes: list[int]) -> dict[int, dict[str, lib.LoadResult]]:
    """GET and search throughput on one fresh server as it is filled to each size."""
    out: dict[int, dict[str, lib.LoadResult]] = {}
    if not sizes:
        return out
    svc = _server(kind, args).start()
    print(f"[{kind}] growth: started {svc.name} at {svc.url}", flush=True)
    try:
        pool = lib.Pool([svc.url])
        conns = pool.conns(args.clients)
        cpu = {"server": [svc.proc.pid], "generator": "self"}
        ids: list[str] = []
        have = 0
        for size in sorted(sizes):
            t0 = lib.perf()
            # metadata `user` takes 100 values: the filtered search matches 1% of the threads
            body_users = [f"u{i % 100}" for i in range(have, size)]

            async def one(conn: lib.Conn, user: str) -> str:
                r = await conn.request("POST", "/threads", {"metadata": {"user": user}})
                return lib.check(r, "POST /threads").json()["thread_id"]

            ids += await lib.run_many(conns, body_users, one)
            have = size
            print(f"[{kind}] filled to {size:,} threads in {lib.perf() - t0:.1f}s", flush=True)
            level: dict[str, lib.LoadResult] = {}
            for key, name, op in (
                ("get", "GET /threads/{id}", lib.op_get_thread(ids)),
                ("search", "POST /threads/search", lib.op_search_threads({"limit": 10})),
                ("search_meta", "POST /threads/search (metadata)",
                 lib.op_search_threads({"metadata": {"user": "u7"}, "limit": 10})),
            ):
                r = await lib.closed_loop(name, op, conns, duration=args.duration, warmup=args.warmup, cpu=cpu)
                level[key] = r
                print(f"[{kind}] {size:,} threads, {name}: {lib.describe(r)}", flush=True)
            out[size] = level
        for c in conns:
            c.close()
    finally:
        svc.stop()
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return a / b


def _lat(res: dict | None, key: str) -> str | None:
    if not res or key not in res or not res[key].latencies:
        return None
    return f"{res[key].p50:.1f} / {res[key].p99:.1f}"


def _cpu(res: dict | None, key: str) -> float | None:
    return res[key].cpu_ms_per_op("server") if res and key in res else None


def report(args, cal, ours, official, g_ours, g_off) -> str:
    def rate(res, key):
        return res[key].rate if res and key in res else None

    rows = []
    targets = {
        "create": ("POST /threads (req/s)", 4.0),
        "get": ("GET /threads/{id} (req/s)", 3.0),
        "search": ("POST /threads/search (req/s)", 3.0),
        "wait": ("POST /runs/wait echo (runs/s)", 4.0),
        "steps": ("10-step thread run (runs/s)", 2.5),
    }
    for key, (label, target) in targets.items():
        a, b = rate(ours, key), rate(official, key)
        ratio = _ratio(a, b)
        errs = sum(r[key].errors for r in (ours, official) if r and key in r)
        rows.append([label, a, b, ratio, f">= {target:g}x", _met(ratio, target) + (f" ({errs} err)" if errs else ""),
                     _lat(ours, key), _lat(official, key), _cpu(ours, key), _cpu(official, key)])
    a = ours["stream"].unit_rate if ours else None
    b = official["stream"].unit_rate if official else None
    ratio = _ratio(a, b)
    rows.append([f"{args.events}-event stream (events/s)", a, b, ratio, ">= 5x", _met(ratio, 5.0),
                 _lat(ours, "stream"), _lat(official, "stream"), _cpu(ours, "stream"), _cpu(official, "stream")])

    def ttfe(res, loaded: bool) -> tuple[float | None, str | None]:
        if not res:
            return None, None
        values = sorted(res["stream"].extra.get("ttfe", [])) if loaded else res["ttfe_alone"]
        if not values:
            return None, None
        p50, p99 = lib.percentile(values, 50) * 1000, lib.percentile(values, 99) * 1000
        return p50, f"{p50:.1f} / {p99:.1f}"

    for loaded, label in ((False, "time to first event, alone (ms)"),
                          (True, f"time to first event, {args.clients} clients (ms)")):
        (a50, a_s), (b50, b_s) = ttfe(ours, loaded), ttfe(official, loaded)
        target, met = ("< 20 ms", "yes" if a50 is not None and a50 < 20 else "NO") if not loaded else ("-", "-")
        rows.append([label, a50, b50, _ratio(b50, a50), target, met, a_s, b_s, None, None])

    head = ["metric", "ours", "official", "ratio", "target", "met", "ours p50/p99 ms", "off p50/p99 ms",
            "ours CPU ms/op", "off CPU ms/op"]
    out = [lib.table(head, rows, title=f"Agent Server vs langgraph dev: {args.clients} clients, server on core 0, "
                     f"generator on core 1, N_JOBS_PER_WORKER={args.n_jobs}, {args.duration:g}s per test "
                     "(ratio = ours/official; for time to first event, official/ours)")]
    out.append("")
    grows = []
    for size in sorted(set(g_ours) | set(g_off)):
        for key, label in (("get", "GET /threads/{id}"), ("search", "POST /threads/search"),
                           ("search_meta", "search, metadata filter (1%)")):
            a = g_ours.get(size, {})
            b = g_off.get(size, {})
            grows.append([f"{size:,} threads: {label}", rate(a, key), rate(b, key), _ratio(rate(a, key), rate(b, key)),
                          _lat(a, key), _lat(b, key), _cpu(a, key), _cpu(b, key)])
    if grows:
        out.append(lib.table(["growth (req/s)", "ours", "official", "ratio", "ours p50/p99 ms", "off p50/p99 ms",
                              "ours CPU ms/op", "off CPU ms/op"],
                             grows, title="Growth: the same reads on a database of N threads "
                                          "(fresh server, filled by POST /threads)"))
        if len(g_ours) >= 2:
            lo, hi = min(g_ours), max(g_ours)
            notes = []
            for key, label in (("get", "GET"), ("search", "search"), ("search_meta", "metadata search")):
                ra, rb = g_ours[lo][key].rate, g_ours[hi][key].rate
                notes.append(f"{label} {rb / ra * 100:.0f}%" if ra else f"{label} -")
            out.append(f"ours at {hi:,} vs {lo:,} threads, throughput (target: no slowdown): " + ", ".join(notes))
        out.append("")
    if cal:
        out.append(f"load generator alone against a trivial server on core 0, {args.clients} connections: "
                   f"GET {cal['GET'].rate:,.0f}/s, POST {cal['POST'].rate:,.0f}/s "
                   f"(generator {cal['GET'].cpu_share('generator'):.2f} cores)")
        shares = [r.cpu_share("generator") for res in (ours, official) if res
                  for r in res.values() if isinstance(r, lib.LoadResult) and r.cpu_share("generator") is not None]
        if shares:
            out.append(f"load generator during the tests: at most {max(shares):.2f} cores")
    return "\n".join(out)


def _met(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "-"
    return "yes" if ratio >= target else "NO"


async def main(args: argparse.Namespace) -> None:
    if not args.no_pin:
        lib.pin_self(CLIENT_CPU)
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')} — {lib.machine()}", flush=True)
    cal = await calibrate(args)
    print(f"generator alone: GET {lib.describe(cal['GET'])}; POST {lib.describe(cal['POST'])}", flush=True)
    servers = {s.strip() for s in args.servers.split(",")}
    ours = await suite("ours", args) if "ours" in servers else None
    official = await suite("official", args) if "official" in servers else None
    g_ours = await growth("ours", args, _sizes(args.growth)) if "ours" in servers and not args.skip_growth else {}
    g_off = (await growth("official", args, _sizes(args.official_growth))
             if "official" in servers and not args.skip_growth else {})
    print()
    print(report(args, cal, ours, official, g_ours, g_off))


if __name__ == "__main__":
    lib.use_uvloop()
    asyncio.run(main(parse_args()))
