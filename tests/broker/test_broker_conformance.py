"""The broker port's contract, run against both implementations (in-process and Redis).

`python -m tests.test_broker_conformance` runs a small publish/subscribe benchmark of the
in-process broker instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from agentserver.broker.base import Broker, Event
from agentserver.broker.memory import MemoryBroker
from agentserver.broker.redis import RedisBroker
from agentserver.errors import InvalidInput
from agentserver.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request):
    created: list[Broker] = []

    async def make(**overrides) -> Broker:
        if request.param == "memory":
            broker: Broker = MemoryBroker(Settings().with_(**overrides))
        else:
            server = request.getfixturevalue("redis_server")
            settings = Settings(redis_uri=server.uri, redis_key_prefix=f"test-{uuid.uuid4().hex[:12]}:")
            broker = RedisBroker(settings.with_(**overrides))
        await broker.setup()
        created.append(broker)
        return broker

    yield make
    for broker in created:
        await broker.close()


@pytest.fixture
async def broker(make_broker) -> Broker:
    return await make_broker()


def rid() -> str:
    return str(uuid.uuid4())


async def collect(broker: Broker, run_id: str, after: str | None = "0", idle_secs: float = 5.0) -> list[Event]:
    """Every event until the log ends (idle Nones skipped)."""
    out: list[Event] = []
    async for ev in broker.subscribe(run_id, after, idle_secs=idle_secs):
        if ev is not None:
            out.append(ev)
    return out


async def started_live(broker: Broker, run_id: str, after: str | None, out: list) -> asyncio.Task:
    """A subscriber task that is known to be subscribed: it waits for its first idle None."""
    first_idle = asyncio.Event()

    async def run() -> None:
        async for ev in broker.subscribe(run_id, after, idle_secs=0.05):
            if ev is None:
                first_idle.set()
            else:
                out.append(ev)

    task = asyncio.create_task(run())
    await asyncio.wait_for(first_idle.wait(), 10)
    return task


async def test_publish_order_and_ids(broker):
    run_id = rid()
    got: list[Event] = []
    reader = await started_live(broker, run_id, "0", got)
    ids = []
    for i in range(200):
        ids.append(await broker.publish(run_id, "values" if i % 2 else "updates|sub:1", b'{"i":%d}' % i))
        if i % 25 == 0:
            await asyncio.sleep(0.001)
    await broker.finish_stream(run_id)
    await asyncio.wait_for(reader, 10)
    assert ids == [str(i) for i in range(1, 201)]
    assert [e.id for e in got] == ids
    assert [e.data for e in got] == [b'{"i":%d}' % i for i in range(200)]
    assert got[0].event == "updates|sub:1" and got[1].event == "values"


async def test_replay_from_an_id(broker):
    run_id = rid()
    for i in range(10):
        await broker.publish(run_id, "values", str(i).encode())
    # a reader joining mid-run replays what it asks for, then follows the live log
    mid = asyncio.create_task(collect(broker, run_id, "4"))
    await asyncio.sleep(0.05)
    await broker.publish(run_id, "values", b"10")
    await broker.finish_stream(run_id)
    assert [e.id for e in await asyncio.wait_for(mid, 10)] == [str(i) for i in range(5, 12)]
    assert [e.data for e in await collect(broker, run_id, "-1")] == [str(i).encode() for i in range(11)]
    assert len(await collect(broker, run_id, "0")) == 11
    assert [e.id for e in await collect(broker, run_id, "9")] == ["10", "11"]
    assert await asyncio.wait_for(collect(broker, run_id, "11"), 5) == []
    assert await asyncio.wait_for(collect(broker, run_id, "500"), 5) == []


async def test_invalid_event_id(broker):
    with pytest.raises(InvalidInput):
        broker.subscribe(rid(), "abc")
    with pytest.raises(InvalidInput):
        broker.subscribe(rid(), "-5")


async def test_live_only_subscription(broker):
    run_id = rid()
    for i in range(3):
        await broker.publish(run_id, "values", b"old")
    got: list[Event] = []
    reader = await started_live(broker, run_id, None, got)
    await broker.publish(run_id, "values", b"new1")
    await broker.publish(run_id, "values", b"new2")
    await broker.finish_stream(run_id)
    await asyncio.wait_for(reader, 10)
    assert [(e.id, e.data) for e in got] == [("4", b"new1"), ("5", b"new2")]


async def test_live_subscription_before_the_first_event(broker):
    run_id = rid()
    got: list[Event] = []
    reader = await started_live(broker, run_id, None, got)
    await broker.publish(run_id, "values", b"first")
    await broker.finish_stream(run_id)
    await asyncio.wait_for(reader, 10)
    assert [(e.id, e.data) for e in got] == [("1", b"first")]


async def test_multiple_subscribers(broker):
    run_id = rid()
    outs: list[list[Event]] = [[], [], []]
    readers = [await started_live(broker, run_id, "0", out) for out in outs]
    for i in range(60):
        await broker.publish(run_id, "messages", b"%d" % i)
        if i % 7 == 0:
            await asyncio.sleep(0.002)
    await broker.finish_stream(run_id)
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    expected = [str(i) for i in range(1, 61)]
    for out in outs:
        assert [e.id for e in out] == expected
        assert [e.data for e in out] == [b"%d" % i for i in range(60)]


async def test_subscription_to_a_finished_log(broker):
    run_id = rid()
    for i in range(5):
        await broker.publish(run_id, "values", b"%d" % i)
    await broker.finish_stream(run_id)
    assert await broker.stream_done(run_id)
    assert [e.id for e in await asyncio.wait_for(collect(broker, run_id, "0"), 5)] == ["1", "2", "3", "4", "5"]
    # a live join of a finished log ends at once, without events
    t0 = time.monotonic()
    assert await asyncio.wait_for(collect(broker, run_id, None, idle_secs=30), 5) == []
    assert time.monotonic() - t0 < 3
    # finishing twice is harmless
    await broker.finish_stream(run_id)
    assert len(await collect(broker, run_id, "0")) == 5


async def test_finish_without_events(broker):
    run_id = rid()
    assert not await broker.stream_done(run_id)
    await broker.finish_stream(run_id)
    assert await broker.stream_done(run_id)
    assert await asyncio.wait_for(collect(broker, run_id, "0"), 5) == []


async def test_stream_done(broker):
    run_id = rid()
    assert not await broker.stream_done(run_id)
    await broker.publish(run_id, "values", b"{}")
    assert not await broker.stream_done(run_id)
    await broker.finish_stream(run_id)
    assert await broker.stream_done(run_id)


async def test_ttl_expiry(make_broker):
    broker = await make_broker(resumable_stream_ttl_seconds=1)
    run_id = rid()
    for i in range(3):
        await broker.publish(run_id, "values", b"%d" % i)
    await broker.finish_stream(run_id)
    t0 = time.monotonic()
    assert len(await collect(broker, run_id, "0")) == 3
    while await broker.stream_done(run_id):
        assert time.monotonic() - t0 < 5, "the log did not expire"
        await asyncio.sleep(0.05)
    assert time.monotonic() - t0 > 0.5
    # gone: a reader finds nothing and waits (idle) for a log that may yet come
    items = []
    async for ev in broker.subscribe(run_id, "0", idle_secs=0.1):
        items.append(ev)
        break
    assert items == [None]


async def test_idle_yields_none(broker):
    run_id = rid()
    seen: list[Event | None] = []
    t0 = time.monotonic()
    async for ev in broker.subscribe(run_id, "0", idle_secs=0.2):
        seen.append(ev)
        if len(seen) == 2:
            await broker.publish(run_id, "values", b"x")
        if ev is not None:
            break
    elapsed = time.monotonic() - t0
    assert seen[:2] == [None, None]
    assert seen[2:] == [Event("1", "values", b"x")]
    assert 0.35 < elapsed < 3


async def test_closing_a_subscription(broker):
    run_id = rid()
    sub = broker.subscribe(run_id, "0", idle_secs=0.05)
    assert await sub.__anext__() is None
    await sub.aclose()
    await broker.publish(run_id, "values", b"1")
    assert [e.id for e in await _first(broker, run_id, 1)] == ["1"]


async def _first(broker: Broker, run_id: str, n: int) -> list[Event]:
    out = []
    async for ev in broker.subscribe(run_id, "0", idle_secs=0.1):
        if ev is not None:
            out.append(ev)
            if len(out) == n:
                break
    return out


async def test_control(broker):
    run_id = rid()
    assert await broker.get_control(run_id) is None
    got: list[str] = []
    arrived = asyncio.Event()

    async def on_control(action: str) -> None:
        got.append(action)
        arrived.set()

    stop = await broker.watch_control(run_id, on_control)
    await broker.send_control(run_id, "interrupt")
    await asyncio.wait_for(arrived.wait(), 5)
    assert got == ["interrupt"]
    assert await broker.get_control(run_id) == "interrupt"
    # a later action replaces it
    arrived.clear()
    await broker.send_control(run_id, "rollback")
    await asyncio.wait_for(arrived.wait(), 5)
    assert got == ["interrupt", "rollback"]
    assert await broker.get_control(run_id) == "rollback"
    await stop()
    await broker.send_control(run_id, "interrupt")
    await asyncio.sleep(0.2)
    assert got == ["interrupt", "rollback"]
    # the run's end clears it
    await broker.finish_stream(run_id)
    assert await broker.get_control(run_id) is None


async def test_control_sent_before_watching(broker):
    """A worker that claims the run after the cancel still sees it, also through its watcher."""
    run_id = rid()
    await broker.send_control(run_id, "rollback")
    assert await broker.get_control(run_id) == "rollback"
    got: list[str] = []
    stop = await broker.watch_control(run_id, got.append)  # a plain (sync) callback
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got == ["rollback"]
    await stop()
    await stop()  # idempotent


async def test_control_is_per_run(broker):
    a, b = rid(), rid()
    got: list[str] = []
    stop = await broker.watch_control(a, got.append)
    await broker.send_control(b, "interrupt")
    await asyncio.sleep(0.2)
    assert got == [] and await broker.get_control(a) is None
    await stop()


async def test_thread_events(broker):
    thread_id, other = rid(), rid()
    got: list[tuple[str, str]] = []
    first = asyncio.Event()

    async def listen() -> None:
        async for item in broker.thread_events(thread_id):
            got.append(item)
            first.set()
            if item == ("r2", "done"):
                return

    async def listen_other() -> None:
        async for item in broker.thread_events(other):
            got.append(("other", item[1]))

    listener = asyncio.create_task(listen())
    other_listener = asyncio.create_task(listen_other())
    # "from now on": notify until the listener is known to be subscribed
    for _ in range(500):
        await broker.notify_thread(thread_id, "r0", "ping")
        try:
            await asyncio.wait_for(first.wait(), 0.02)
            break
        except asyncio.TimeoutError:
            pass
    assert first.is_set()
    for run_id, what in [("r1", "started"), ("r1", "done"), ("r2", "started"), ("r2", "done")]:
        await broker.notify_thread(thread_id, run_id, what)
    await asyncio.wait_for(listener, 5)
    other_listener.cancel()
    await asyncio.gather(other_listener, return_exceptions=True)
    real = [item for item in got if item[1] != "ping"]
    assert real == [("r1", "started"), ("r1", "done"), ("r2", "started"), ("r2", "done")]


async def test_wake_ups_wake_every_waiter(broker):
    await broker.wait_for_wake(0)  # forget a pending wake-up
    assert await broker.wait_for_wake(0.1) is False
    waiters = [asyncio.create_task(broker.wait_for_wake(10)) for _ in range(3)]
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await broker.wake_workers()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True, True, True]
    assert time.monotonic() - t0 < 2


async def test_wake_up_while_nobody_waits_is_kept(broker):
    await broker.wake_workers()
    await asyncio.sleep(0.2)  # the Redis broker hears its own wake-up through pub/sub
    assert await broker.wait_for_wake(5) is True
    assert await broker.wait_for_wake(0.1) is False


async def test_timed_wake_up_comes_when_due(broker):
    await asyncio.sleep(0.2)
    await broker.wait_for_wake(0)  # forget a pending wake-up
    t0 = time.time()
    await broker.wake_workers(at=t0 + 0.6)
    assert await broker.wait_for_wake(0.3) is False  # not before it is due
    assert await broker.wait_for_wake(5) is True
    assert 0.5 <= time.time() - t0 < 3


async def test_run_queued_wakes_workers_and_tells_the_thread(broker):
    await asyncio.sleep(0.2)
    await broker.wait_for_wake(0)
    events = broker.thread_events("t-queued")
    first = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0.3)  # subscribed
    await broker.run_queued("t-queued", "r-queued")
    assert await broker.wait_for_wake(5) is True
    got = await asyncio.wait_for(first, 5)
    while got[1] == "ping":
        got = await asyncio.wait_for(events.__anext__(), 5)
    assert got == ("r-queued", "created")
    await events.aclose()


async def test_use_from_another_event_loop(broker):
    """BG_JOB_ISOLATED_LOOPS: a job on its own loop in another thread publishes, watches its
    control channel, waits for wake-ups, reads a log, and the main loop sees it all."""
    run_id, other_run = rid(), rid()
    got: list[Event] = []
    reader = await started_live(broker, run_id, "0", got)

    async def job() -> tuple[list[str], bool, list[bytes]]:
        actions: list[str] = []
        arrived = asyncio.Event()

        def on_control(action: str) -> None:
            assert asyncio.get_running_loop() is loop  # called on the job's own loop
            actions.append(action)
            arrived.set()

        loop = asyncio.get_running_loop()
        stop = await broker.watch_control(run_id, on_control)
        for i in range(50):
            await broker.publish(run_id, "values", b"%d" % i)
        woke = await broker.wait_for_wake(10)
        await asyncio.wait_for(arrived.wait(), 10)
        await stop()
        await broker.finish_stream(run_id)
        read = [e.data async for e in broker.subscribe(other_run, "0", idle_secs=0.1) if e is not None]
        idle = broker.subscribe(rid(), "0", idle_secs=0.05)
        assert await idle.__anext__() is None
        await idle.aclose()
        return actions, woke, read

    result: dict = {}

    def thread_main() -> None:
        result["value"] = asyncio.run(job())

    await broker.publish(other_run, "values", b"a")
    await broker.publish(other_run, "values", b"b")
    await broker.finish_stream(other_run)
    thread = threading.Thread(target=thread_main)
    thread.start()
    await asyncio.sleep(0.1)
    await broker.wake_workers()
    await broker.send_control(run_id, "interrupt")
    await asyncio.to_thread(thread.join, 20)
    assert not thread.is_alive()
    actions, woke, read = result["value"]
    assert actions == ["interrupt"] and woke is True and read == [b"a", b"b"]
    await asyncio.wait_for(reader, 10)
    assert [e.data for e in got] == [b"%d" % i for i in range(50)]
    assert [e.id for e in got] == [str(i) for i in range(1, 51)]


async def test_memory_log_is_capped(monkeypatch):
    """In-process only: a very long log drops its oldest events (like the Redis stream's MAXLEN);
    ids go on, and a reader from the start resumes at the oldest kept event."""
    import agentserver.broker.memory as memory

    monkeypatch.setattr(memory, "MAX_EVENTS_PER_RUN", 10)
    monkeypatch.setattr(memory, "TRIM_CHUNK", 5)
    broker = MemoryBroker(Settings())
    await broker.setup()
    run_id = rid()
    ids = [await broker.publish(run_id, "values", b"%d" % i) for i in range(16)]
    await broker.finish_stream(run_id)
    assert ids == [str(i) for i in range(1, 17)]
    assert [e.id for e in await collect(broker, run_id, "0")] == [str(i) for i in range(6, 17)]
    assert [e.id for e in await collect(broker, run_id, "12")] == ["13", "14", "15", "16"]
    await broker.close()


async def _bench(n: int = 200_000) -> None:
    broker = MemoryBroker(Settings())
    await broker.setup()
    received = 0

    async def read() -> None:
        nonlocal received
        async for ev in broker.subscribe("bench", "0"):
            if ev is not None:
                received += 1

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    for i in range(n):
        await broker.publish("bench", "messages", b'{"content":"token"}')
        if i % 100 == 0:
            await asyncio.sleep(0)
    await broker.finish_stream("bench")
    await reader
    elapsed = time.perf_counter() - t0
    print(f"MemoryBroker: {n / elapsed:,.0f} publish/s with one subscriber ({received} received)")
    await broker.close()


if __name__ == "__main__":
    asyncio.run(_bench())
