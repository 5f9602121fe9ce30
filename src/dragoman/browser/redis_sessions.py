"""Browser sessions in Redis, shared by every proxy instance (redis-py, asyncio).

One hash per session at ``dragoman:session:<id>``, expiring with the session (PEXPIRE).
Each operation is one round trip: create is a MULTI/EXEC of HSET + PEXPIRE, get is
HGETALL, rotate is one Lua script (atomic: two refreshes at once rotate once), delete is
DEL. Times are the proxy's clock, passed in, so the grace is measured like everywhere else.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from dragoman.browser.sessions import Session, SessionStoreUnavailable
from dragoman.state.redis import open_redis, ping

KEY_PREFIX = "dragoman:session:"
TIMEOUT = 2.0
"""Seconds a connection or a command may take before the store counts as unavailable."""

# KEYS[1] the session; ARGV: presented, fresh, previous_until. Rotates only when the
# presented randomness is the current one; answers the session after, or nil if gone.
ROTATE = """
local current = redis.call('HGET', KEYS[1], 'cur')
if not current then return nil end
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'prev', current, 'prev_until', ARGV[3], 'cur', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'n', 1)
end
return redis.call('HGETALL', KEYS[1])
"""


def _fields(session: Session) -> dict[str, str]:
    fields = {
        "sub": session.subject,
        "iss": session.issuer,
        "created": repr(session.created_at),
        "expires": repr(session.expires_at),
        "cur": session.current,
        "prev_until": repr(session.previous_until),
        "n": str(session.refreshes),
    }
    if session.cloud_account is not None:
        fields["acct"] = session.cloud_account
    if session.previous is not None:
        fields["prev"] = session.previous
    return fields


def _session(session_id: str, fields: dict[str, str]) -> Session:
    return Session(
        id=session_id,
        subject=fields["sub"],
        issuer=fields["iss"],
        cloud_account=fields.get("acct"),
        created_at=float(fields["created"]),
        expires_at=float(fields["expires"]),
        current=fields["cur"],
        previous=fields.get("prev"),
        previous_until=float(fields.get("prev_until", "0")),
        refreshes=int(fields.get("n", "0")),
    )


class RedisSessionStore:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._rotate = client.register_script(ROTATE)

    @classmethod
    def from_url(cls, url: str) -> RedisSessionStore:
        return cls(open_redis(url, timeout=TIMEOUT, decode_responses=True))

    async def create(self, session: Session, now: float) -> None:
        ttl_ms = max(1, int((session.expires_at - now) * 1000))
        key = KEY_PREFIX + session.id
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=_fields(session))  # type: ignore[arg-type]
                pipe.pexpire(key, ttl_ms)
                await pipe.execute()
        except RedisError as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc

    async def get(self, session_id: str, now: float) -> Session | None:
        try:
            # decode_responses: every key and value is a str
            fields = cast(dict[str, str], await self._client.hgetall(KEY_PREFIX + session_id))
        except RedisError as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc
        if not fields or "cur" not in fields:
            return None
        session = _session(session_id, fields)
        return session if session.expires_at > now else None

    async def rotate(
        self, session_id: str, presented: str, fresh: str, now: float, grace: float
    ) -> Session | None:
        try:
            flat: Any = await self._rotate(
                keys=[KEY_PREFIX + session_id], args=[presented, fresh, repr(now + grace)]
            )
        except RedisError as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc
        if not flat:
            return None
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        session = _session(session_id, fields)
        return session if session.expires_at > now else None

    async def delete(self, session_id: str) -> None:
        try:
            await self._client.delete(KEY_PREFIX + session_id)
        except RedisError as exc:
            raise SessionStoreUnavailable(type(exc).__name__) from exc

    async def ping(self) -> None:
        await ping(self._client, seconds=TIMEOUT, unavailable=SessionStoreUnavailable)

    async def close(self) -> None:
        await self._client.aclose()
