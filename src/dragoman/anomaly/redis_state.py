"""Counts and blocks in Redis, shared by every proxy instance (redis-py, asyncio).

One decision is one round trip: a Lua script (atomic on the server) checks the account's
block, counts the request into every rule it feeds, evaluates the rules exactly as
:class:`dragoman.anomaly.state.MemoryState` does, and starts a block when a ``block`` rule
fires. Keys share the hash tag of the account (``dragoman:anomaly:{<account>}:...``), so
one script touches one cluster slot; ``<account>`` is the opaque key the stage passes (the
keyed blind index of the verified cloud account, never the account id). Every key expires by itself.

Times are the proxy's clock, passed in (integer milliseconds), never Redis's TIME: the
windows move with the same clock as everything else, and tests move it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from dragoman.anomaly.rules import Feed
from dragoman.anomaly.state import BASELINE_MEMORY, Hit, StateUnavailable, Verdict
from dragoman.state.redis import open_redis, ping
from dragoman.state.redis_script import RedisScript

KEY_PREFIX = "dragoman:anomaly:"
TIMEOUT = 2.0
"""Seconds a connection or a command may take before the store counts as unavailable."""
_ARGS_PER_FEED = 12

# KEYS[1] the account's block (hash: until, rule); then two keys per feed (a, b).
# ARGV[1] now (ms), ARGV[2] nonce (unique member), ARGV[3] baseline memory (windows); then
# 12 per feed: rule, kind, role, window, threshold, factor, min_count, smoothing, pairs,
# pair_within, action, block_for (times in ms).
# Answers one string of words separated by spaces (one bulk reply to parse instead of an
# array of three and three per feed: the client's RESP parser costs a few microseconds per
# element): 'blocked until rule', or 'ok until-or-0 rule-or--' then 'count baseline-or--
# fired(0/1)' per feed. Rule names are lower-case letters, digits, _ and - (settings), so
# '-' alone is no rule's name.
OBSERVE = """
local now = tonumber(ARGV[1])
local nonce = ARGV[2]
local memory = tonumber(ARGV[3])
local block = redis.call('HMGET', KEYS[1], 'until', 'rule')
if block[1] and tonumber(block[1]) > now then
  return 'blocked ' .. string.format('%d', tonumber(block[1])) .. ' ' .. block[2]
end
local out = {'ok', '0', '-'}
local block_until, block_rule = 0, ''
local feeds = (#ARGV - 3) / 12
for i = 0, feeds - 1 do
  local a, b = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local at = 4 + 12 * i
  local rule, kind, role = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local window = tonumber(ARGV[at + 3])
  local threshold, factor = tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5])
  local min_count, smoothing = tonumber(ARGV[at + 6]), tonumber(ARGV[at + 7])
  local pairs, pair_within = tonumber(ARGV[at + 8]), tonumber(ARGV[at + 9])
  local action, block_for = ARGV[at + 10], tonumber(ARGV[at + 11])
  local count, baseline, fired = 0, '-', 0
  if kind == 'card_testing' then
    redis.call('ZREMRANGEBYSCORE', b, '-inf', now - window)
    redis.call('ZREMRANGEBYSCORE', a, '-inf', '(' .. (now - pair_within))
    local paired = false
    if role == 'add' then
      redis.call('ZADD', a, now, nonce)
      redis.call('PEXPIRE', a, pair_within + 1000)
    else
      local latest = redis.call('ZREVRANGEBYSCORE', a, now, now - pair_within, 'LIMIT', 0, 1)
      if #latest > 0 then
        redis.call('ZREM', a, latest[1])
        redis.call('ZADD', b, now, nonce)
        redis.call('PEXPIRE', b, window + 1000)
        paired = true
      end
    end
    count = redis.call('ZCARD', b)
    if paired and count >= pairs then fired = 1 end
  else
    redis.call('ZADD', a, now, nonce)
    redis.call('ZREMRANGEBYSCORE', a, '-inf', now - window)
    redis.call('PEXPIRE', a, window + 1000)
    count = redis.call('ZCARD', a)
    if kind == 'threshold' then
      if count > threshold then fired = 1 end
    else
      local bucket = math.floor(now / window)
      local state = redis.call('HMGET', b, 'bucket', 'count', 'ewma')
      local current, seen = tonumber(state[1]), tonumber(state[2]) or 0
      local ewma = tonumber(state[3])
      if current == nil or bucket - current > memory then
        current, seen, ewma = bucket, 0, nil
        redis.call('HDEL', b, 'ewma')
      elseif bucket > current then
        if ewma == nil then ewma = seen else ewma = ewma + smoothing * (seen - ewma) end
        local gap = bucket - current - 1
        if gap > 0 then ewma = ewma * (1 - smoothing) ^ gap end
        current, seen = bucket, 0
      end
      seen = seen + 1
      redis.call('HSET', b, 'bucket', current, 'count', seen)
      if ewma ~= nil then redis.call('HSET', b, 'ewma', string.format('%.17g', ewma)) end
      redis.call('PEXPIRE', b, window * (memory + 2))
      if ewma ~= nil then
        baseline = string.format('%.17g', ewma)
        if count >= min_count and count > ewma * factor then fired = 1 end
      end
    end
  end
  if fired == 1 and action == 'block' and now + block_for > block_until then
    block_until, block_rule = now + block_for, rule
  end
  table.insert(out, string.format('%d', count))
  table.insert(out, baseline)
  table.insert(out, string.format('%d', fired))
end
if block_until > 0 then
  redis.call('HSET', KEYS[1], 'until', string.format('%d', block_until), 'rule', block_rule)
  redis.call('PEXPIRE', KEYS[1], block_until - now)
  out[2], out[3] = string.format('%d', block_until), block_rule
end
return table.concat(out, ' ')
"""


class RedisState:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._observe = RedisScript(client, OBSERVE, timeout=TIMEOUT)

    @classmethod
    def from_url(cls, url: str) -> RedisState:
        return cls(open_redis(url, timeout=TIMEOUT, decode_responses=True, bounded_by_caller=True))

    async def observe(
        self, account: str, now_ms: int, feeds: Sequence[Feed], nonce: str
    ) -> Verdict:
        base = f"{KEY_PREFIX}{{{account}}}:"
        keys = [base + "block"]
        args: list[Any] = [now_ms, nonce, BASELINE_MEMORY]
        for feed in feeds:
            rule = feed.rule
            keys += [f"{base}{rule.name}:a", f"{base}{rule.name}:b"]
            args += [
                rule.name,
                rule.kind,
                feed.role,
                rule.window_ms,
                rule.threshold,
                repr(rule.factor),
                rule.min_count,
                repr(rule.smoothing),
                rule.pairs,
                rule.pair_within_ms,
                rule.enforced_action,
                rule.block_for_ms,
            ]
        try:
            answer = await self._observe(keys, args)  # the script's batch is bounded by TIMEOUT
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(type(exc).__name__) from None
        return _verdict(answer, feeds)

    async def ping(self) -> None:
        await ping(self._client, seconds=TIMEOUT, unavailable=StateUnavailable)

    async def close(self) -> None:
        await self._observe.close()
        await self._client.aclose()


def _verdict(answer: Any, feeds: Sequence[Feed]) -> Verdict:
    """The script's answer (see OBSERVE); one that is not its shape is the store's failure."""
    try:
        words = answer.split(" ")
        status, until, rule = words[0], int(words[1]), words[2]
        if status == "blocked":
            return Verdict((), blocked_by=rule, blocked_until_ms=until, counted=False)
        if status != "ok" or len(words) != 3 + 3 * len(feeds):
            raise ValueError(status)
        hits = []
        for feed, at in zip(feeds, range(3, len(words), 3), strict=True):
            count, baseline, fired = words[at : at + 3]
            average = None if baseline == "-" else float(baseline)
            hits.append(Hit(feed.rule, int(count), average, fired == "1"))
    except (AttributeError, IndexError, TypeError, ValueError):
        raise StateUnavailable("unexpected_reply") from None
    return Verdict(tuple(hits), blocked_by=None if rule == "-" else rule, blocked_until_ms=until)
