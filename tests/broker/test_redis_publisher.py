"""The Redis publisher's bookkeeping of one run, without Redis: what a flush reply means for the
numbered events (written, lost by a restarted Redis, appended by another publisher)."""

from __future__ import annotations

import agentserver.broker.redis.publisher as publisher
from agentserver.broker.base import DONE
from agentserver.broker.redis.publisher import PubState

TOKEN = "me.1"


def state() -> PubState:
    return PubState("run", "stream:{run}", "control:{run}", TOKEN)


def seqs(items) -> list[int]:
    return [seq for seq, _event, _data in items]


def ok(top: int) -> list:
    return [1, top, None]


def refused(top: int, writer: bytes | None = None) -> list:
    return [0, top, writer]


async def test_written_events_are_kept():
    st = state()
    assert [st.append("values", b"%d" % i) for i in range(3)] == [1, 2, 3]
    assert seqs(st.pending) == [1, 2, 3] and st.wakeup.is_set()
    st.settle(ok(0), 0, 3)
    assert st.top == 3 and not st.pending and st.pending_bytes == 0
    assert seqs(st.kept) == [1, 2, 3] and st.kept_bytes > 0


async def test_restarted_redis_gets_the_lost_events_again_with_their_ids():
    st = state()
    for i in range(5):
        st.append("values", b"%d" % i)
    st.settle(ok(0), 0, 5)
    st.append("values", b"5")
    # Redis came back empty: the check of the top (the flush of event 6) is refused with top 0
    st.settle(refused(0), 5, 6)
    assert st.top == 0 and not st.kept and st.kept_bytes == 0
    assert seqs(st.pending) == [1, 2, 3, 4, 5, 6]
    assert [data for _s, _e, data in st.pending] == [b"%d" % i for i in range(6)]
    assert st.append("values", b"6") == 7  # the numbering goes on
    st.settle(ok(0), 0, 7)
    assert st.top == 7 and seqs(st.kept) == [1, 2, 3, 4, 5, 6, 7] and not st.pending


async def test_partly_lost_stream_is_rewound_to_its_top():
    st = state()
    for i in range(5):
        st.append("values", b"%d" % i)
    st.settle(ok(0), 0, 5)
    st.settle(refused(3), 5, 5)  # a failover kept events 1..3 (an empty batch: a mere check)
    assert st.top == 3 and seqs(st.kept) == [1, 2, 3] and seqs(st.pending) == [4, 5]


async def test_flush_whose_reply_was_lost_is_confirmed_by_its_token():
    st = state()
    for i in range(3):
        st.append("values", b"%d" % i)
    st.append(DONE, b"")
    st.done_seq = 4
    # the flush landed, its reply did not: the retry finds our own token on the top entry
    st.settle(refused(4, TOKEN.encode()), 0, 4)
    assert st.top == 4 and not st.pending and st.seq == 4 and st.done_seq == 4


async def test_foreign_appends_renumber_what_is_unwritten():
    st = state()  # Redis was unreachable when the run's numbering started: it began at 0
    st.append("values", b"a")
    st.append("values", b"b")
    st.append(DONE, b"")
    st.done_seq = 3
    st.settle(refused(7, b"other.1"), 0, 3)  # an earlier attempt of the run wrote 1..7
    assert st.top == 7 and st.seq == 10 and st.done_seq == 10
    assert seqs(st.pending) == [8, 9, 10]
    assert [event for _s, event, _d in st.pending] == ["values", "values", DONE]
    st.settle(ok(7), 7, 10)
    assert st.top == 10 and not st.pending


async def test_backpressure_and_keep_bounds(monkeypatch):
    monkeypatch.setattr(publisher, "PENDING_MAX_EVENTS", 3)
    monkeypatch.setattr(publisher, "KEEP_MAX_EVENTS", 2)
    st = state()
    st.append("values", b"1")
    st.append("values", b"2")
    assert st.room.is_set()
    st.append("values", b"3")
    assert not st.room.is_set()  # `publish` waits from here on
    st.settle(ok(0), 0, 2)
    assert st.room.is_set() and seqs(st.pending) == [3]
    st.settle(ok(2), 2, 3)
    assert seqs(st.kept) == [2, 3]  # the oldest written events go first
