"""The commands the broker runs on a run's stream: the flush script and the read of its top."""

from __future__ import annotations

import hashlib
from typing import Any

from agentserver.broker.redis.keys import seq_of
from redis.exceptions import NoScriptError

# KEYS: stream, control key. ARGV: expected top seq, ttl, maxlen, "1" if the batch holds the end
# marker, writer token, then (seq, event, data) triples. Appends the batch only if the stream's
# top is the expected one; else returns the actual top and the writer token stored on it.
FLUSH_LUA = """
local top = 0
local topw = false
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  top = tonumber(string.match(last[1][1], '^0%-(%d+)$')) or -1
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'w' then topw = f[i + 1] end
  end
end
if top ~= tonumber(ARGV[1]) then
  return {0, top, topw}
end
local n = #ARGV
for i = 6, n, 3 do
  if i + 2 == n then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-' .. ARGV[i],
               'e', ARGV[i + 1], 'd', ARGV[i + 2], 'w', ARGV[5])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-' .. ARGV[i],
               'e', ARGV[i + 1], 'd', ARGV[i + 2])
  end
end
if n >= 6 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
end
return {1, top, false}
"""
FLUSH_SHA = hashlib.sha1(FLUSH_LUA.encode()).hexdigest()


async def flush(redis: Any, key: str, ckey: str, args: list[Any]) -> list[Any]:
    """Run FLUSH_LUA (by its SHA; loaded on first use): its reply is [ok, top, writer]."""
    try:
        return await redis.evalsha(FLUSH_SHA, 2, key, ckey, *args)
    except NoScriptError:
        return await redis.eval(FLUSH_LUA, 2, key, ckey, *args)


async def stream_top(redis: Any, key: str) -> tuple[int, dict | None]:
    """The last entry of a stream: its sequence number and fields; (0, None) for no stream."""
    entries = await redis.xrevrange(key, "+", "-", count=1)
    if not entries:
        return 0, None
    entry_id, fields = entries[0]
    return seq_of(entry_id), fields
