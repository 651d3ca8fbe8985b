"""The embedded shape (`agentserver dev`): throughput, latency, run pickup and slot utilisation.

    /work/venv/bin/python bench/embedded.py [--duration 5] [--clients 32] [--slots 10,100,1000]

Starts `agentserver dev` on the graphs of tests/graphs (a fresh data directory each time), pinned
to core 0 with this load generator on core 1 (`--no-pin` to let both float), and measures:

- stateless `POST /runs/wait` on the one-node `echo` graph: runs/s, p50/p99;
- `POST /threads` and `GET /threads/{id}`: requests/s, p50/p99 (`--clients` connections);
- pickup latency: `--pickup-runs` sequential runs created with streaming
  (`POST /threads/{id}/runs/stream`, stream_mode values), from the request being sent to the first
  event that is not `metadata`: median and p99 (target: median < 10 ms);
- the 1-second graph (`sleeper`, secs=1) with N_JOBS_PER_WORKER = each of `--slots` (a fresh server
  each): twice as many clients as slots call stateless `POST /runs/wait` back to back, so a run is
  always pending when a slot frees; completed runs/s against the ideal of `slots` runs/s
  (target: >= 95% of ideal at 1000 slots).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import lib  # noqa: E402

SERVER_CPU = "0"
CLIENT_CPU = "1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per test (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per test (default 1)")
    p.add_argument("--clients", type=int, default=32, help="concurrent connections (default 32)")
    p.add_argument("--n-jobs", type=int, default=32, help="N_JOBS_PER_WORKER for the request tests (default 32)")
    p.add_argument("--pickup-runs", type=int, default=300, help="sequential runs for pickup latency (default 300)")
    p.add_argument("--slots", default="10,100,1000", help="N_JOBS_PER_WORKER values for the 1-second graph")
    p.add_argument("--sleeper-duration", type=float, default=10.0,
                   help="seconds measured per slot setting (default 10)")
    p.add_argument("--sleeper-warmup", type=float, default=4.0,
                   help="seconds of warm-up per slot setting (default 4)")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and generator to cores")
    p.add_argument("--profile", metavar="DIR", help="record each test with py-spy into DIR (skews the figures)")
    return p.parse_args(argv)


async def pickup(conn: lib.Conn, thread_ids: list[str]) -> list[float]:
    body = json.dumps({"assistant_id": "echo", "input": {"value": 1}, "stream_mode": ["values"]}).encode()
    out = []
    for tid in thread_ids:
        r = await lib.stream_run(conn, f"/threads/{tid}/runs/stream", body)
        out.append(r["ttfe"])
    return out


async def requests_suite(args: argparse.Namespace) -> tuple[dict[str, lib.LoadResult], list[float]]:
    cpus = None if args.no_pin else SERVER_CPU
    svc = lib.ours_dev(cpus=cpus, env={"N_JOBS_PER_WORKER": str(args.n_jobs)}).start()
    print(f"started {svc.name} at {svc.url} (log {svc.log_path})", flush=True)
    res: dict[str, lib.LoadResult] = {}
    try:
        conns = lib.Pool([svc.url]).conns(args.clients)
        ids = await lib.create_threads(conns, 1000)
        for key, name, op in (
            ("wait", "POST /runs/wait (echo)", lib.op_runs_wait("echo", {"value": 1})),
            ("create", "POST /threads", lib.op_create_thread()),
            ("get", "GET /threads/{id}", lib.op_get_thread(ids)),
        ):
            with lib.maybe_profile(svc, args.profile, key):
                r = await lib.closed_loop(name, op, conns, duration=args.duration, warmup=args.warmup,
                                          cpu={"server": [svc.proc.pid], "generator": "self"})
            res[key] = r
            print(f"{name}: {lib.describe(r)}", flush=True)
        fresh = await lib.create_threads(conns, args.pickup_runs)
        for c in conns[1:]:
            c.close()
        # a few runs first, so that the first ones (imports, caches) are not counted
        await pickup(conns[0], await lib.create_threads(conns[:1], 10))
        with lib.maybe_profile(svc, args.profile, "pickup"):
            lat = sorted(await pickup(conns[0], fresh))
        print(f"pickup latency over {len(lat)} runs: median {statistics.median(lat) * 1000:.2f} ms, "
              f"p99 {lib.percentile(lat, 99) * 1000:.2f} ms", flush=True)
        conns[0].close()
    finally:
        svc.stop()
    return res, lat


async def sleeper(args: argparse.Namespace, slots: int) -> lib.LoadResult:
    cpus = None if args.no_pin else SERVER_CPU
    svc = lib.ours_dev(cpus=cpus, env={"N_JOBS_PER_WORKER": str(slots)}).start()
    try:
        clients = max(2 * slots, slots + 16)
        conns = lib.Pool([svc.url]).conns(clients)
        with lib.maybe_profile(svc, args.profile, f"sleeper-{slots}"):
            r = await lib.closed_loop(f"sleeper 1s, {slots} slots", lib.op_runs_wait("sleeper", {"secs": 1}), conns,
                                      duration=args.sleeper_duration, warmup=args.sleeper_warmup,
                                      cpu={"server": [svc.proc.pid], "generator": "self"})
        ideal = float(slots)
        print(f"sleeper 1s with {slots} slots ({clients} clients): {r.rate / ideal * 100:.1f}% of {ideal:,.0f} ideal; "
              f"{lib.describe(r)}", flush=True)
        for c in conns:
            c.close()
        return r
    finally:
        svc.stop()


async def main(args: argparse.Namespace) -> None:
    if not args.no_pin:
        lib.pin_self(CLIENT_CPU)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"# {stamp} — {lib.machine()}", flush=True)
    print("(srv cores: CPU the server used in the window, in cores; CPU ms/op: server CPU per request or run)",
          flush=True)
    res, lat = await requests_suite(args)
    slot_values = [int(x) for x in args.slots.split(",") if x.strip()]
    sl = {n: await sleeper(args, n) for n in slot_values}

    rows = []
    for key, label in (("wait", "POST /runs/wait, echo (runs/s)"), ("create", "POST /threads (req/s)"),
                       ("get", "GET /threads/{id} (req/s)")):
        r = res[key]
        rows.append([label, r.rate, r.p50, r.p99, r.cpu_share("server"), r.cpu_ms_per_op("server"), r.errors, "-"])
    p50 = statistics.median(lat) * 1000
    rows.append([f"pickup latency, {len(lat)} sequential runs (ms)", p50, p50, lib.percentile(lat, 99) * 1000,
                 None, None, 0, f"median < 10 ms: {'yes' if p50 < 10 else 'NO'}"])
    print()
    where = "server on core 0, generator on core 1" if not args.no_pin else "unpinned"
    print(lib.table(["metric", "value", "p50 ms", "p99 ms", "srv cores", "CPU ms/op", "errors", "target"], rows,
                    title=f"agentserver dev: {args.clients} clients, N_JOBS_PER_WORKER={args.n_jobs}, {where}, "
                          f"{args.duration:g}s per test"))
    print()
    srows = []
    for n, r in sl.items():
        pct = r.rate / n * 100
        target = f">= 95%: {'yes' if pct >= 95 else 'NO'}" if n == 1000 else "-"
        srows.append([f"{n:,} slots ({max(2 * n, n + 16):,} clients)", r.rate, float(n), pct, r.p50, r.p99,
                      r.cpu_share("server"), r.cpu_ms_per_op("server"), r.errors, target])
    if not srows:
        return
    print(lib.table(["sleeper secs=1", "runs/s", "ideal", "% ideal", "p50 ms", "p99 ms", "srv cores", "CPU ms/run",
                     "errors", "target"], srows,
                    title=f"1-second graph, stateless /runs/wait, N_JOBS_PER_WORKER = slots, "
                          f"{args.sleeper_duration:g}s measured after {args.sleeper_warmup:g}s"))


if __name__ == "__main__":
    lib.use_uvloop()
    asyncio.run(main(parse_args()))
