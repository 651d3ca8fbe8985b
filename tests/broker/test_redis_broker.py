"""What only the Redis broker has to get right: key prefixes, Redis restarts, cluster mode."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

import agentserver.broker.redis.broker as redis_broker
from agentserver.broker.base import Event
from agentserver.broker.redis import RedisBroker
from agentserver.settings import Settings
from tests.harness import RedisServer, free_port

pytestmark = pytest.mark.timeout(120)


def rid() -> str:
    return str(uuid.uuid4())


async def make(uri: str, prefix: str | None = None, **overrides) -> RedisBroker:
    prefix = prefix if prefix is not None else f"test-{uuid.uuid4().hex[:12]}:"
    broker = RedisBroker(Settings(redis_uri=uri, redis_key_prefix=prefix).with_(**overrides))
    await broker.setup()
    return broker


async def read_all(broker: RedisBroker, run_id: str, after: str | None = "0") -> list[Event]:
    return [ev async for ev in broker.subscribe(run_id, after, idle_secs=0.2) if ev is not None]


@pytest.fixture(scope="module")
def own_redis():
    """A Redis of this module's own, which the tests may stop and restart."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
async def raw(redis_server):
    client = Redis.from_url(redis_server.uri)
    yield client
    await client.aclose()


async def test_key_prefix_isolation(redis_server, raw):
    a = await make(redis_server.uri, "iso-a:")
    b = await make(redis_server.uri, "iso-b:")
    try:
        run_id, thread_id = rid(), rid()
        await a.publish(run_id, "values", b"from-a")
        await b.publish(run_id, "values", b"from-b1")
        await b.publish(run_id, "values", b"from-b2")
        await a.finish_stream(run_id)
        assert [e.data for e in await read_all(a, run_id)] == [b"from-a"]
        assert await a.stream_done(run_id) and not await b.stream_done(run_id)
        await b.finish_stream(run_id)
        assert [e.data for e in await read_all(b, run_id)] == [b"from-b1", b"from-b2"]

        got_b: list[str] = []
        stop = await b.watch_control(run_id, got_b.append)
        await a.send_control(run_id, "interrupt")
        await asyncio.sleep(0.2)
        assert got_b == [] and await b.get_control(run_id) is None
        assert await a.get_control(run_id) == "interrupt"
        await stop()

        await b.wait_for_wake(0)
        waiter = asyncio.create_task(b.wait_for_wake(0.5))
        await a.wake_workers()
        assert await waiter is False

        heard: list[tuple[str, str]] = []

        async def listen() -> None:
            async for item in b.thread_events(thread_id):
                heard.append(item)

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.2)
        await a.notify_thread(thread_id, run_id, "started")
        await asyncio.sleep(0.2)
        await b.notify_thread(thread_id, run_id, "done")
        await asyncio.sleep(0.2)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        assert heard == [(run_id, "done")]

        keys = [k.decode() async for k in raw.scan_iter(match=f"*{run_id}*")]
        assert keys and all(k.startswith(("iso-a:", "iso-b:")) for k in keys)
        assert f"iso-a:stream:{{{run_id}}}" in keys and f"iso-b:stream:{{{run_id}}}" in keys
        assert f"iso-a:control:{{{run_id}}}" in keys
    finally:
        await a.close()
        await b.close()


async def test_stream_key_has_ttl_and_ids_are_sequence_numbers(redis_server, raw):
    broker = await make(redis_server.uri, resumable_stream_ttl_seconds=30)
    try:
        run_id = rid()
        for i in range(3):
            await broker.publish(run_id, "values", b"%d" % i)
        await broker.finish_stream(run_id)
        key = broker.stream_key(run_id)
        assert 0 < await raw.ttl(key) <= 30
        entries = await raw.xrange(key)
        assert [e[0] for e in entries] == [b"0-1", b"0-2", b"0-3", b"0-4"]
        assert entries[-1][1][b"e"] == b"__done__"
    finally:
        await broker.close()


async def test_another_worker_continues_the_numbering(redis_server):
    """A run retried by another worker: the new publisher numbers after the old one's events."""
    first = await make(redis_server.uri)
    second = await make(redis_server.uri, first.prefix)
    try:
        run_id = rid()
        for i in range(5):
            await first.publish(run_id, "values", b"a%d" % i)
        await first.close()  # writes what it has, and goes away without finishing the stream
        assert await second.publish(run_id, "values", b"b0") == "6"
        await second.publish(run_id, "values", b"b1")
        await second.finish_stream(run_id)
        events = await read_all(second, run_id)
        assert [e.id for e in events] == [str(i) for i in range(1, 8)]
        assert [e.data for e in events] == [b"a0", b"a1", b"a2", b"a3", b"a4", b"b0", b"b1"]
    finally:
        await second.close()


async def test_publisher_renumbers_after_a_foreign_write(redis_server, raw):
    """Someone else appended to the stream behind the publisher's back (a stalled former worker):
    what is unwritten goes after it, nothing is overwritten or lost."""
    broker = await make(redis_server.uri)
    try:
        run_id = rid()
        await broker.publish(run_id, "values", b"mine-1")
        await broker.publish(run_id, "values", b"mine-2")
        await asyncio.sleep(0.2)  # written
        key = broker.stream_key(run_id)
        await raw.xadd(key, {"e": "values", "d": b"theirs"}, id="0-3")
        await broker.publish(run_id, "values", b"mine-3")
        await broker.finish_stream(run_id)
        events = await read_all(broker, run_id)
        assert [(e.id, e.data) for e in events] == [
            ("1", b"mine-1"), ("2", b"mine-2"), ("3", b"theirs"), ("4", b"mine-3"),
        ]
    finally:
        await broker.close()


async def test_redis_restart_mid_stream(own_redis):
    """Redis restarts (losing everything) while a run publishes 500 events: a reader that
    resumes from its last id gets every event exactly once and in order."""
    publisher = await make(own_redis.uri)
    reader_side = await make(own_redis.uri, publisher.prefix)
    watcher_side = await make(own_redis.uri, publisher.prefix)
    try:
        run_id = rid()
        received: list[Event] = []
        idles = 0

        async def read() -> None:
            nonlocal idles
            async for ev in reader_side.subscribe(run_id, "0", idle_secs=0.2):
                if ev is None:
                    idles += 1
                else:
                    received.append(ev)

        reader = asyncio.create_task(read())
        actions: list[str] = []
        stop_watching = await watcher_side.watch_control(run_id, actions.append)

        restart = None
        for i in range(500):
            assert await publisher.publish(run_id, "messages", b'{"n":%d}' % i) == str(i + 1)
            if i == 150:
                restart = asyncio.create_task(asyncio.to_thread(own_redis.restart))
            await asyncio.sleep(0.003)
        await restart
        await publisher.finish_stream(run_id)
        await asyncio.wait_for(reader, 30)

        assert [e.id for e in received] == [str(i) for i in range(1, 501)]
        assert [e.data for e in received] == [b'{"n":%d}' % i for i in range(500)]
        # the whole log was written again: a late reader replays all of it
        assert len(await read_all(reader_side, run_id)) == 500
        assert await reader_side.stream_done(run_id)

        # pub/sub came back by itself: control and wake-ups get through again
        deadline = time.monotonic() + 10
        while not actions and time.monotonic() < deadline:
            await publisher.send_control(run_id, "interrupt")
            await asyncio.sleep(0.1)
        assert actions == ["interrupt"]
        await stop_watching()
        await watcher_side.wait_for_wake(0)
        waiter = asyncio.create_task(watcher_side.wait_for_wake(5))
        await asyncio.sleep(0.05)
        await publisher.wake_workers()
        assert await waiter is True
    finally:
        for b in (publisher, reader_side, watcher_side):
            await b.close()


async def test_publish_never_raises_while_redis_is_down(own_redis, monkeypatch):
    monkeypatch.setattr(redis_broker, "FINISH_WAIT_SECS", 0.3)
    broker = await make(own_redis.uri)
    other = await make(own_redis.uri, broker.prefix)
    try:
        run_id = rid()
        await broker.publish(run_id, "values", b"before")
        await asyncio.sleep(0.1)
        await asyncio.to_thread(own_redis.stop)
        try:
            for i in range(20):
                await broker.publish(run_id, "values", b"%d" % i)
            t0 = time.monotonic()
            await broker.finish_stream(run_id)  # gives up waiting, keeps the end marker
            assert time.monotonic() - t0 < 2
            assert await broker.stream_done(run_id)  # known locally
        finally:
            await asyncio.to_thread(own_redis.start)
        events = await asyncio.wait_for(read_all(other, run_id), 20)
        assert [e.data for e in events] == [b"before"] + [b"%d" % i for i in range(20)]
        assert await other.stream_done(run_id)
    finally:
        await broker.close()
        await other.close()


async def test_control_rechecked_after_pubsub_reconnect(own_redis):
    """A control action whose message was missed (pub/sub connection down) is found in its key."""
    broker = await make(own_redis.uri)
    raw = Redis.from_url(own_redis.uri)
    try:
        run_id = rid()
        actions: list[str] = []
        stop = await broker.watch_control(run_id, actions.append)
        await raw.set(broker.control_key(run_id), "rollback")  # the key, without the message
        await asyncio.sleep(0.1)
        assert actions == []
        await raw.client_kill_filter(_type="pubsub")
        deadline = time.monotonic() + 10
        while not actions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert actions == ["rollback"]
        await stop()
    finally:
        await raw.aclose()
        await broker.close()


async def test_setup_fails_when_redis_is_unreachable(monkeypatch):
    from agentserver.errors import Unavailable

    monkeypatch.setattr(redis_broker, "SETUP_WAIT_SECS", 0.3)
    broker = RedisBroker(Settings(redis_uri=f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(Unavailable):
        await broker.setup()


# ---- cluster ---------------------------------------------------------------------------------
def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


class RedisCluster3:
    """Three master nodes, no replicas, on loopback."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agentserver-redis-cluster-"))
        self.ports = _cluster_ports(3)
        self.procs: list[subprocess.Popen] = []
        self.uri = f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> "RedisCluster3":
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir()
            self.procs.append(
                subprocess.Popen(
                    [exe, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", str(node_dir / "nodes.conf"), "--cluster-node-timeout", "2000",
                     "--save", "", "--appendonly", "no", "--dir", str(node_dir), "--protected-mode", "no"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(lambda: subprocess.run([cli, "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for port in self.ports:
            self._wait(
                lambda: b"cluster_state:ok"
                in subprocess.run([cli, "-p", str(port), "cluster", "info"], capture_output=True).stdout
            )
        return self

    @staticmethod
    def _wait(check, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not come up")
            time.sleep(0.05)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster():
    cluster = RedisCluster3()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


async def test_cluster_mode(redis_cluster):
    a = await make(redis_cluster.uri, redis_cluster=True)
    b = await make(redis_cluster.uri, a.prefix, redis_cluster=True)
    try:
        assert isinstance(a.redis, RedisCluster)
        run_ids = [rid() for _ in range(8)]  # spread over the nodes' slots
        slots = set()
        for run_id in run_ids:
            stream_slot = await a.redis.cluster_keyslot(a.stream_key(run_id))
            assert stream_slot == await a.redis.cluster_keyslot(a.control_key(run_id))
            slots.add(stream_slot)
            for i in range(5):
                await a.publish(run_id, "values", b"%d" % i)
            await a.finish_stream(run_id)
        assert len(slots) > 1
        for run_id in run_ids:
            events = await read_all(b, run_id)
            assert [e.id for e in events] == ["1", "2", "3", "4", "5"]
            assert await b.stream_done(run_id)

        live_run = rid()
        got: list[Event] = []

        async def follow() -> None:
            async for ev in b.subscribe(live_run, "0", idle_secs=0.1):
                if ev is not None:
                    got.append(ev)

        reader = asyncio.create_task(follow())
        actions: list[str] = []
        stop = await b.watch_control(live_run, actions.append)
        for i in range(20):
            await a.publish(live_run, "values", b"%d" % i)
        await a.send_control(live_run, "interrupt")
        await a.finish_stream(live_run)
        await asyncio.wait_for(reader, 10)
        assert [e.data for e in got] == [b"%d" % i for i in range(20)]
        deadline = time.monotonic() + 5
        while not actions and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert actions == ["interrupt"]
        await stop()

        await b.wait_for_wake(0)
        waiter = asyncio.create_task(b.wait_for_wake(5))
        await asyncio.sleep(0.05)
        await a.wake_workers()
        assert await waiter is True
    finally:
        await a.close()
        await b.close()
