"""A Lua script on the hot path, run on Redis connections of its own, calls sent together.

The rate limit's script goes with every request, the anomaly state's with every counted
operation. Through the client (``client.register_script``) each call cost ~58 µs of CPU
here, about half of it the client's layers around the command: the pool's lock and
bookkeeping, its observability recorder and event dispatch, the retry wrapper. The same
command on redis-py's own connection objects costs ~31 µs, so the script keeps a few of
them idle and takes one per batch: the same connection class, settings (address, TLS,
credentials, database, decoding) and protocol parser as the client's pool, through
``ConnectionPool.make_connection``.

Calls made during one turn of the event loop go together (as the audit trail's group
commit does): at the start of the next turn one task sends their EVALSHA commands in one
write on one connection and reads the answers in order, each to its own caller. A busy
worker's requests reach the rate limit in bursts, so one system call and one wake-up serve
many; a lone call pays one turn of the loop. Each command is still its own script run, atomic
on the server, so a batch decides exactly what the same calls one by one would. An error
answer (a script error, NOSCRIPT) belongs to its own call; a connection that fails fails
every call of the batch still waiting (none is sent again: a script that ran once may have
counted), and ``timeout`` bounds the whole batch.

The EVALSHA command is written here (RESP arrays of bulk strings, byte for byte what
redis-py's ``pack_command`` writes: a test holds them equal) because the client's general
encoder cost more than the rest of the send; the rare EVAL fallback goes through the
client's own ``send_command``.

As in the client's pool, an idle connection is checked before it is used: one the server
closed meanwhile (a restart, an idle timeout) is replaced before anything is sent, so a
restart costs no refusal. A batch that fails or runs out of time drops its connection,
whose answers might still arrive. A call whose caller gave up (its own timeout) before
the batch was sent is left out of it; after, its answer is read and thrown away, never
handed to another call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

KEEP_IDLE = 64
"""Idle connections kept (the rest of a burst's connections are closed when it ends)."""

MAX_BATCH = 256
"""Calls sent in one write at most; a busier turn of the loop starts another batch."""

Argument = str | int | float | bytes


class _Call:
    __slots__ = ("args", "command", "future", "keys")

    def __init__(
        self,
        keys: Sequence[str],
        args: Sequence[Argument],
        command: bytes,
        future: asyncio.Future[Any],
    ) -> None:
        self.keys = keys
        self.args = args
        self.command = command
        self.future = future


class RedisScript:
    def __init__(
        self,
        client: redis.Redis,
        source: str,
        *,
        timeout: float = 1.0,
        keep_idle: int = KEEP_IDLE,
        max_batch: int = MAX_BATCH,
    ) -> None:
        """``timeout``: what one batch may take, from its connection to its last answer.
        It bounds its callers' wait too (they set no timer of their own): a call is
        answered or failed within ``timeout`` of its batch's start, at the next turn of
        the loop."""
        self._pool = client.connection_pool
        self._source = source
        # EVALSHA names the script by the SHA-1 of its source: Redis's own naming.
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._evalsha = _bulk(b"EVALSHA") + _bulk(self._sha.encode())
        self._timeout = timeout
        self._keep_idle = keep_idle
        self._max_batch = max_batch
        self._idle: list[AbstractConnection] = []
        self._batch: list[_Call] | None = None
        self._sending: set[asyncio.Task[None]] = set()  # strong references to the batches

    async def __call__(self, keys: Sequence[str], args: Sequence[Argument]) -> Any:
        """The script's reply; raises what redis-py raises (RedisError, OSError)."""
        command = self.packed(keys, args)  # a bad argument fails here, its caller's alone
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        batch = self._batch
        if batch is None or len(batch) >= self._max_batch:
            batch = self._batch = []
            task = loop.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        batch.append(_Call(keys, args, command, future))
        return await future

    @property
    def idle(self) -> int:
        """Connections kept for the next batches (tests)."""
        return len(self._idle)

    async def close(self) -> None:
        """Close the idle connections, once the batches under way have their answers."""
        while self._sending:
            await asyncio.wait(list(self._sending))
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()

    def packed(self, keys: Sequence[str], args: Sequence[Argument]) -> bytes:
        """The EVALSHA command for ``keys`` and ``args``, as sent."""
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), self._evalsha, _bulk(b"%d" % len(keys))]
        parts += [_bulk(key.encode()) for key in keys]
        parts += [_bulk(_encoded(arg)) for arg in args]
        return b"".join(parts)

    async def _send(self, batch: list[_Call]) -> None:
        """Send the calls gathered in this turn of the loop, and answer each."""
        if self._batch is batch:
            self._batch = None  # later calls start a batch of their own
        calls = [call for call in batch if not call.future.done()]  # given up: not sent
        if not calls:
            return
        try:
            async with asyncio.timeout(self._timeout):
                connection = await self._checkout()
                try:
                    await self._run(connection, calls)
                except BaseException:
                    await connection.disconnect(nowait=True)
                    raise
        except Exception as exc:
            _fail(calls, exc)
            return
        except BaseException:
            _fail(calls, redis.ConnectionError("the batch was cancelled"))
            raise
        if len(self._idle) < self._keep_idle:
            self._idle.append(connection)
        else:
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

    async def _run(self, connection: AbstractConnection, calls: list[_Call]) -> None:
        await connection.send_packed_command([call.command for call in calls])
        unloaded: list[_Call] = []
        for call in calls:
            try:
                reply = await connection.read_response()
            except NoScriptError:  # a restarted or flushed server
                unloaded.append(call)
            except ResponseError as exc:  # this call's own error answer
                _answer(call, exc)
            else:
                _answer(call, reply)
        for call in unloaded:  # EVAL loads it again
            await connection.send_command(
                "EVAL", self._source, len(call.keys), *call.keys, *call.args
            )
            try:
                _answer(call, await connection.read_response())
            except ResponseError as exc:
                _answer(call, exc)


def _answer(call: _Call, reply: Any) -> None:
    future = call.future
    if future.done():
        return  # its caller gave up
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)


def _fail(calls: list[_Call], exc: Exception) -> None:
    for call in calls:
        _answer(call, exc)


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
