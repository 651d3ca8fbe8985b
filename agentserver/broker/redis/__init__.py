"""The Redis broker: the scaled shape (API servers and queue workers share one Redis).

    broker.py     `RedisBroker`: the `Broker` port, composing the pieces below; reading the
                  logs (`XREAD BLOCK`), thread notifications, wake-ups, loop hops
    publisher.py  write-behind publishing: per-run state, one flusher per run, and the
                  confirm / rewind / rebase that re-adds what a restarted Redis lost
    hub.py        the one pub/sub connection per process (control, thread, wake channels)
    control.py    control actions: the pending key, its channel, this process's watchers
    scripts.py    the flush Lua script and the read of a stream's top
    keys.py       key and channel names, stream entry ids `0-<seq>`, wake-up messages
    retry.py      what counts as transient, and the backoff between attempts

Publishing is write-behind: `publish` numbers the event and returns; the run's flusher writes
batches with a script that checks the stream's top id first, and writes again, with the same
ids, whatever Redis lost (restart, failover, expiry), so a reader that resumes from its last id
neither misses nor repeats an event. A Redis outage never raises into the run: the flusher
retries with backoff, `publish` only waits once a run has too much unwritten data
(backpressure), `finish_stream` waits a little.

Control, thread and wake channels share one long-lived pub/sub connection per process that
reconnects by itself, re-subscribes, then re-checks pending control actions, wakes the local
waiters and verifies the logs being published.
"""

from agentserver.broker.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
