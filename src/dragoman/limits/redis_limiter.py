"""Rate-limit counters in Redis, shared by every proxy instance (redis-py, asyncio).

One request, one round trip: a Lua script (EVALSHA, loaded again on NOSCRIPT; run on
connections of its own, :mod:`dragoman.state.redis_script`) runs the GCRA of
:mod:`dragoman.limits.gcra` for every rule of the request. Only when every rule allows
does it store the new TATs, each with a PEXPIRE of the time after which the key is idle
(an expired key and an idle one decide the same); a refusal stores nothing. The script
reads the server's ``TIME``, not the caller's clock, so instances with skewed clocks agree
on one timeline. Keys are ``dragoman:rl:<rule>:<sha256 of the subject>``, and the subject
names its account or customer by the mapping store's keyed blind index: no id in Redis,
and none to recover.

Redis unreachable, slow past ``timeout``, or answering an error: LimiterUnavailable (the
stage then fails closed). Commands are not retried: a retried script may already have
counted, and the timeout bounds what one decision can add to a request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from dragoman.limits.gcra import MICROSECONDS, Decision
from dragoman.limits.rules import Check, LimiterUnavailable, Verdict
from dragoman.state.redis import open_redis, ping
from dragoman.state.redis_script import RedisScript

KEY_PREFIX = "dragoman:rl:"

# KEYS: one per check. ARGV[1]: now in microseconds, or '' for the server's TIME; then the
# emission interval and the burst tolerance of each check (microseconds). Answers, per
# check: allowed (1/0), TAT, remaining, retry_after, reset_after, as one string of integers
# (one bulk reply to parse instead of an array of five per check: the client's RESP parser
# costs a few microseconds per element). Mirrors gcra.decide.
DECIDE = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local out = {}
local tats = {}
local all = true
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local start = tonumber(redis.call('GET', KEYS[i]))
  if start == nil or start < now or start - now > tolerance + interval then start = now end
  local ahead = start - now
  local n = #out
  if ahead > tolerance then
    all = false
    out[n + 1], out[n + 2], out[n + 3] = 0, start, 0
    out[n + 4], out[n + 5] = ahead - tolerance, ahead
  else
    local tat = start + interval
    tats[i] = tat
    out[n + 1], out[n + 2], out[n + 3] = 1, tat, math.floor((tolerance - ahead) / interval)
    out[n + 4], out[n + 5] = 0, tat - now
  end
end
if all then
  for i = 1, #KEYS do
    local ttl = math.ceil((tats[i] - now) / 1000)
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  end
end
for k = 1, #out do out[k] = string.format('%.0f', out[k]) end
return table.concat(out, ' ')
"""


def key_of(check: Check) -> str:
    digest = hashlib.sha256(check.subject.encode()).hexdigest()
    return f"{KEY_PREFIX}{check.rule.name}:{digest}"


class RedisLimiter:
    def __init__(
        self,
        client: redis.Redis,
        *,
        timeout: float = 0.5,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` is for tests that move time; unset (in service), the script uses the
        Redis server's TIME."""
        self._client = client
        self._script = RedisScript(client, DECIDE, timeout=timeout)
        self._timeout = timeout
        self._clock = clock

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.5) -> RedisLimiter:
        return cls(open_redis(url, timeout=timeout, bounded_by_caller=True), timeout=timeout)

    async def decide(self, checks: Sequence[Check]) -> Verdict:
        now = "" if self._clock is None else str(int(self._clock() * MICROSECONDS))
        args: list[str | int] = [now]
        for check in checks:
            args += [check.rule.interval, check.rule.tolerance]
        try:
            # The script's batch is bounded by the same timeout and fails its calls when
            # it runs out: a timer of the caller's own would cost every request ~4 µs more.
            flat: Any = await self._script([key_of(c) for c in checks], args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterUnavailable(type(exc).__name__) from exc
        try:
            values = [int(v) for v in flat.split()]
        except (AttributeError, ValueError):
            raise LimiterUnavailable("unexpected_reply") from None
        if len(values) != 5 * len(checks):
            raise LimiterUnavailable("unexpected_reply")
        return Verdict(
            tuple(
                Decision(
                    allowed=values[i] == 1,
                    tat=values[i + 1],
                    remaining=values[i + 2],
                    retry_after=values[i + 3],
                    reset_after=values[i + 4],
                )
                for i in range(0, len(values), 5)
            )
        )

    async def ping(self) -> None:
        await ping(self._client, seconds=self._timeout, unavailable=LimiterUnavailable)

    async def close(self) -> None:
        await self._script.close()
        await self._client.aclose()
