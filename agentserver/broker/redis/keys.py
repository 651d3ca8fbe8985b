"""What the Redis broker's data is called and how it is spelled in Redis.

Keys and channels (every one starts with `REDIS_KEY_PREFIX`; `{run_id}` is a cluster hash tag,
so a run's keys live in one slot):

    <prefix>stream:{<run_id>}     the run's event log, a Redis Stream with ids `0-<seq>`
    <prefix>control:{<run_id>}    the pending control action of the run (string)
    <prefix>control:<run_id>      pub/sub channel: control actions as they are sent
    <prefix>thread:<thread_id>    pub/sub channel: `[run_id, what]` notifications
    <prefix>wake                  pub/sub channel: "runs may be ready"

Stream entries carry explicit ids `0-<seq>` (`<seq>` is the event's id on the wire), so a
publisher can re-add what a restarted Redis lost without duplicates.
"""

from __future__ import annotations


class Keys:
    """The names of one broker's keys and channels (one `REDIS_KEY_PREFIX`)."""

    __slots__ = ("prefix", "wake_channel")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.wake_channel = f"{prefix}wake"

    def stream(self, run_id: str) -> str:
        return f"{self.prefix}stream:{{{run_id}}}"

    def control(self, run_id: str) -> str:
        return f"{self.prefix}control:{{{run_id}}}"

    def control_channel(self, run_id: str) -> str:
        return f"{self.prefix}control:{run_id}"

    def thread_channel(self, thread_id: str) -> str:
        return f"{self.prefix}thread:{thread_id}"


def seq_of(entry_id: bytes | str) -> int:
    """The sequence number of a stream entry id `0-<seq>`; -1 for an id of another form."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, _, seq = entry_id.partition("-")
    return int(seq) if ms == "0" else -1


def wake_message(at: float | None) -> bytes:
    """A wake-up on the wake channel: the moment to wake at (`time.time()`), or "1" for now.
    Each process keeps its own timer for a future one."""
    return b"1" if at is None else repr(float(at)).encode()


def wake_at(data: bytes) -> float | None:
    """The moment a wake-up message asks for (None: now). Raises ValueError for a malformed one."""
    return None if data == b"1" else float(data)
