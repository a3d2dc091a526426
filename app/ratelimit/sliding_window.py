"""The sliding-window log: one Lua script, run atomically by Redis, decides one request.

Each (policy, client) pair has one Redis list holding the arrival times of the requests
it was *allowed* in the last window, newest first. The script drops the times that left
the window, counts the rest, and admits the request if fewer than the quota remain, all
against Redis' own clock (`TIME`): one round trip per request, no race between workers,
and app-host clocks do not matter. Refused requests are not recorded, so hammering does
not extend a lock-out. Why not GCRA or a fixed window: docs/rate-limiting.md.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from app.ratelimit.autopipeline import AutoPipeline
from app.ratelimit.policy import RateLimitPolicy

# KEYS[1] the client's log; ARGV[1] quota, ARGV[2] window in ms, ARGV[3] "now" in ms
# (empty: Redis' clock; tests pass one to step through window edges exactly).
# Returns {allowed 0|1, remaining, ms until the oldest logged request leaves the window}.
# Times are whole milliseconds: 13 digits, which Lua's doubles and its %.14g number
# formatting both carry exactly.
SLIDING_WINDOW_LOG = """
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local quota = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local key = KEYS[1]
-- The oldest time still in the window once the loop ends (false: the log is empty).
local oldest
while true do
  oldest = redis.call('LINDEX', key, -1)
  if not oldest or tonumber(oldest) > now - window then break end
  redis.call('RPOP', key)
end
local used = redis.call('LLEN', key)
local allowed = 0
if used < quota then
  redis.call('LPUSH', key, now)
  redis.call('PEXPIRE', key, window)
  used = used + 1
  allowed = 1
  -- LPUSH adds at the head: the oldest stays what the loop found, unless the log was
  -- empty (one LINDEX less per call: the script's Redis time x 0.83).
  if not oldest then oldest = now end
end
local wait = window
if oldest then wait = tonumber(oldest) + window - now end
return {allowed, math.max(quota - used, 0), math.min(math.max(wait, 0), window)}
"""
SLIDING_WINDOW_LOG_SHA = hashlib.sha1(SLIDING_WINDOW_LOG.encode()).hexdigest()  # noqa: S324


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    # Seconds until more quota becomes available (rounded up): the draft's `t`, and
    # Retry-After when refused.
    reset_seconds: int


async def acquire(
    redis: Redis | AutoPipeline, key: str, policy: RateLimitPolicy, now_ms: int | None = None
) -> Decision:
    """Count one request of `key` against `policy`, atomically, in one round-trip."""
    args = (policy.quota, policy.window_seconds * 1000, "" if now_ms is None else now_ms)
    try:
        reply = await redis.execute_command("EVALSHA", SLIDING_WINDOW_LOG_SHA, 1, key, *args)
    except NoScriptError:  # first call on this server (or after a restart): load it
        reply = await redis.execute_command("EVAL", SLIDING_WINDOW_LOG, 1, key, *args)
    allowed, remaining, wait_ms = (int(value) for value in reply)
    return Decision(bool(allowed), remaining, math.ceil(wait_ms / 1000))
