"""A Lua script on the hot path, run on Redis connections of its own.

The rate limit's script goes with every request, the anomaly state's with every counted
operation. Through the client (``client.register_script``) each call cost ~58 µs of CPU
here, about half of it the client's layers around the command: the pool's lock and
bookkeeping, its observability recorder and event dispatch, the retry wrapper. The same
command on redis-py's own connection objects costs ~31 µs, so the script keeps a few of
them idle and takes one per call: the same connection class, settings (address, TLS,
credentials, database, decoding) and protocol parser as the client's pool, through
``ConnectionPool.make_connection``.

The EVALSHA command is written here (RESP arrays of bulk strings, byte for byte what
redis-py's ``pack_command`` writes: a test holds them equal) because the client's general
encoder cost more than the rest of the send; the rare EVAL fallback goes through the
client's own ``send_command``.

As in the client's pool, an idle connection is checked before it is used: one the server
closed meanwhile (a restart, an idle timeout) is replaced before anything is sent, so a
restart costs no refusal. A command that fails or is cancelled (the caller's timeout)
drops its connection, whose answer might still arrive; the command is never sent again (a
script that ran once may have counted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError

KEEP_IDLE = 64
"""Idle connections kept (the rest of a burst's connections are closed when it ends)."""


class RedisScript:
    def __init__(self, client: redis.Redis, source: str, *, keep_idle: int = KEEP_IDLE) -> None:
        self._pool = client.connection_pool
        self._source = source
        # EVALSHA names the script by the SHA-1 of its source: Redis's own naming.
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._evalsha = _bulk(b"EVALSHA") + _bulk(self._sha.encode())
        self._keep_idle = keep_idle
        self._idle: list[AbstractConnection] = []

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int | float | bytes]) -> Any:
        """The script's reply; raises what redis-py raises (RedisError, OSError)."""
        connection = await self._checkout()
        try:
            reply = await self._run(connection, keys, args)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        if len(self._idle) < self._keep_idle:
            self._idle.append(connection)
        else:
            await connection.disconnect()
        return reply

    @property
    def idle(self) -> int:
        """Connections kept for the next calls (tests)."""
        return len(self._idle)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()

    async def _checkout(self) -> AbstractConnection:
        while self._idle:
            connection = self._idle.pop()
            try:
                if not await connection.can_read():  # nothing pending and not closed
                    return connection
            except (redis.ConnectionError, OSError):
                pass
            await connection.disconnect(nowait=True)
        fresh: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await fresh.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await fresh.disconnect(nowait=True)
            raise
        return fresh

    def packed(self, keys: Sequence[str], args: Sequence[str | int | float | bytes]) -> bytes:
        """The EVALSHA command for ``keys`` and ``args``, as sent."""
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), self._evalsha, _bulk(b"%d" % len(keys))]
        parts += [_bulk(key.encode()) for key in keys]
        parts += [_bulk(_encoded(arg)) for arg in args]
        return b"".join(parts)

    async def _run(
        self,
        connection: AbstractConnection,
        keys: Sequence[str],
        args: Sequence[str | int | float | bytes],
    ) -> Any:
        await connection.send_packed_command(self.packed(keys, args))
        try:
            return await connection.read_response()
        except NoScriptError:  # a restarted or flushed server: EVAL loads it again
            await connection.send_command("EVAL", self._source, len(keys), *keys, *args)
            return await connection.read_response()


def _encoded(value: object) -> bytes:
    """An argument as redis-py's encoder writes it; what it refuses (a bool, None, other
    types) is refused here too, never written in some other form."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if type(value) is int or type(value) is float:
        return repr(value).encode()
    raise TypeError(f"a script argument cannot be a {type(value).__name__}")


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)
