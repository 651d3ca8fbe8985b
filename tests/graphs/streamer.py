"""`streamer`: one node writing `n` custom stream events `{"i": 0}` ... `{"i": n-1}` (input `n`,
default 100), optionally pausing `delay` seconds between events.

For tests of `custom` stream mode, event ordering and ids, resumable streams and replay from
`Last-Event-ID`, and back-pressure with many events. Output: `{"n": n, "count": n}`.
"""

import asyncio

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class State(TypedDict, total=False):
    n: int
    delay: float
    count: int


async def stream(state: State) -> State:
    writer = get_stream_writer()
    n = state.get("n", 100)
    delay = state.get("delay", 0)
    for i in range(n):
        writer({"i": i})
        if delay:
            await asyncio.sleep(delay)
    return {"count": n}


graph = StateGraph(State).add_node("stream", stream).add_edge(START, "stream").add_edge("stream", END).compile()
