"""The hot path's Lua scripts on connections of their own (dragoman.state.redis_script),
against the real Redis: calls made together sent as one batch, each answered with its own
reply or error; reused connections, a closed or flushed server recovered before anything is
sent, a batch that fails or runs out of time failing its calls and dropping its
connection."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from redis.exceptions import ResponseError

from dragoman.state.redis_script import RedisScript

INCR = "return redis.call('INCR', KEYS[1])"
# Busy for about `ARGV[1]` ms of the server's clock, then answers ARGV[2].
SLOW = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
repeat
  t = redis.call('TIME')
until tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 - start >= tonumber(ARGV[1])
return ARGV[2]
"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A client whose connections carry a name of their own (to find and kill them)."""
    named = redis.Redis.from_url(redis_url, client_name=f"script-test-{uuid.uuid4().hex[:12]}")
    yield named
    await named.aclose()


@pytest.fixture
def key() -> str:
    return f"dragoman:test:script:{uuid.uuid4().hex}"


async def own_connections(client: redis.Redis) -> list[dict[str, str]]:
    name = client.connection_pool.connection_kwargs["client_name"]
    listed = await client.client_list()
    return [c for c in listed if c.get("name") == name]


async def test_a_call_answers_what_the_script_returns(client: redis.Redis, key: str) -> None:
    script = RedisScript(client, INCR)
    assert [await script([key], []) for _ in range(3)] == [1, 2, 3]
    await script.close()
    await client.delete(key)


async def test_calls_one_after_another_reuse_one_connection(client: redis.Redis, key: str) -> None:
    script = RedisScript(client, INCR)
    for _ in range(20):
        await script([key], [])
    assert script.idle == 1
    # The client's own CLIENT LIST goes through its pool: one more connection, named alike.
    assert len(await own_connections(client)) == 2
    await script.close()
    await client.delete(key)


async def test_a_flushed_script_cache_is_loaded_again_by_the_call(
    client: redis.Redis, key: str
) -> None:
    script = RedisScript(client, INCR)
    await script([key], [])
    await client.script_flush()
    assert await script([key], []) == 2
    assert await script([key], []) == 3  # and EVALSHA finds it again
    await script.close()
    await client.delete(key)


async def test_an_idle_connection_the_server_closed_is_replaced_before_the_call(
    client: redis.Redis, key: str
) -> None:
    """A Redis restart or idle timeout must not refuse the next request."""
    script = RedisScript(client, INCR)
    await script([key], [])
    mine = await own_connections(client)
    for connection in mine:
        await client.client_kill_filter(_id=connection["id"])
    await asyncio.sleep(0.05)  # the loop sees the close
    assert await script([key], []) == 2
    await script.close()
    await client.delete(key)


async def test_a_call_given_up_after_it_was_sent_never_hands_its_answer_to_another(
    client: redis.Redis,
) -> None:
    script = RedisScript(client, SLOW)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await script([], [200, "late"])
    assert script.idle == 0  # its batch is still reading the answer
    assert await script([], [0, "mine"]) == b"mine"
    await script.close()


async def test_a_batch_past_its_timeout_fails_every_call_and_drops_its_connection(
    client: redis.Redis,
) -> None:
    script = RedisScript(client, SLOW, timeout=0.05)
    answers = await asyncio.gather(
        *(script([], [200, "late"]) for _ in range(3)), return_exceptions=True
    )
    assert [type(a) for a in answers] == [TimeoutError] * 3
    await script.close()
    assert script.idle == 0  # its answers may still come: never read by another batch


async def test_calls_made_together_go_in_one_batch_on_one_connection_in_order(
    client: redis.Redis, key: str
) -> None:
    script = RedisScript(client, INCR)
    assert await asyncio.gather(*(script([key], []) for _ in range(20))) == list(range(1, 21))
    assert script.idle == 1
    assert len(await own_connections(client)) == 2  # the script's one and CLIENT LIST's
    await script.close()
    await client.delete(key)


async def test_a_batch_larger_than_its_bound_is_sent_as_several(
    client: redis.Redis, key: str
) -> None:
    script = RedisScript(client, INCR, max_batch=4)
    answers = await asyncio.gather(*(script([key], []) for _ in range(10)))
    assert sorted(answers) == list(range(1, 11))
    assert script.idle == 3  # 4 + 4 + 2, each batch on a connection of its own
    await script.close()
    await client.delete(key)


async def test_an_error_answer_belongs_to_its_own_call_alone(client: redis.Redis, key: str) -> None:
    fails_when_asked = """
if ARGV[1] == 'fail' then return redis.error_reply('ERR refused by the script') end
return redis.call('INCR', KEYS[1])
"""
    script = RedisScript(client, fails_when_asked)
    answers = await asyncio.gather(
        script([key], ["ok"]),
        script([key], ["fail"]),
        script([key], ["ok"]),
        return_exceptions=True,
    )
    assert answers[0] == 1 and answers[2] == 2
    assert isinstance(answers[1], ResponseError)
    assert "refused by the script" in str(answers[1])
    assert script.idle == 1  # an error answer is an answer: the connection goes on
    await script.close()
    await client.delete(key)


async def test_a_flushed_script_cache_is_loaded_again_for_every_call_of_a_batch(
    client: redis.Redis, key: str
) -> None:
    script = RedisScript(client, INCR)
    await script([key], [])
    await client.script_flush()
    assert sorted(await asyncio.gather(*(script([key], []) for _ in range(5)))) == [2, 3, 4, 5, 6]
    await script.close()
    await client.delete(key)


async def test_a_call_given_up_before_its_batch_is_sent_is_not_sent(
    client: redis.Redis, key: str
) -> None:
    """A caller whose own timeout ran out while its batch waited for the loop's next turn
    must not be counted: nothing was decided for it."""
    script = RedisScript(client, INCR)
    gave_up = asyncio.create_task(script([key], []))
    await asyncio.sleep(0)  # the call is in the batch; the batch is not sent yet
    gave_up.cancel()
    assert await script([key], []) == 1
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    await script.close()
    await client.delete(key)


async def test_closing_waits_for_the_batch_under_way(client: redis.Redis) -> None:
    script = RedisScript(client, SLOW)
    call = asyncio.create_task(script([], [100, "answered"]))
    await asyncio.sleep(0.02)
    await script.close()
    assert await call == b"answered"


async def test_idle_connections_past_the_bound_are_closed(client: redis.Redis, key: str) -> None:
    script = RedisScript(client, INCR, keep_idle=2, max_batch=1)
    await asyncio.gather(*(script([key], []) for _ in range(6)))
    assert script.idle == 2
    await script.close()
    assert script.idle == 0
    await client.delete(key)


async def test_an_unreachable_server_raises_a_connection_error() -> None:
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    script = RedisScript(unreachable, INCR)
    with pytest.raises((redis.ConnectionError, OSError)):
        await script(["k"], [])
    assert script.idle == 0
    await unreachable.aclose()


@pytest.mark.parametrize(
    ("keys", "args"),
    [
        ([], []),
        (["dragoman:rl:bench:" + "a" * 64], ["", 1, 1_000_000]),
        (["k1", "k2", "k3"], ["", 10, 20, 30, 40, -5, 0]),
        (["{acct}:block"], ["règle", "1.5", 2**62]),
        (["k"], [1.5, 0.1, 10**20, -7, b"raw\x00"]),
    ],
)
def test_the_packed_command_is_what_the_client_would_send(
    keys: list[str], args: list[str | int | float | bytes]
) -> None:
    """The script writes EVALSHA itself (the client's encoder was the send's main cost):
    byte for byte what redis-py's own ``pack_command`` makes of the same call."""
    client = redis.Redis()  # never connects: only its connection class's encoder is used
    script = RedisScript(client, INCR)
    expected = client.connection_pool.make_connection().pack_command(
        "EVALSHA",
        hashlib.sha1(INCR.encode(), usedforsecurity=False).hexdigest(),
        len(keys),
        *keys,
        *args,
    )
    assert script.packed(keys, args) == b"".join(expected)


async def test_a_packed_call_with_several_keys_and_arguments_reaches_the_script(
    client: redis.Redis, key: str
) -> None:
    echo = "return {KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]}"
    script = RedisScript(client, echo)
    answer = await script([key, key + ":2"], ["", 42, "règle"])
    assert answer == [key.encode(), (key + ":2").encode(), b"", b"42", "règle".encode()]
    await script.close()


@pytest.mark.parametrize("bad", [True, None, 2j])
def test_an_argument_the_client_would_refuse_is_refused_not_rewritten(bad: object) -> None:
    with pytest.raises(TypeError):
        RedisScript(redis.Redis(), INCR).packed(["k"], ["", bad])  # type: ignore[list-item]


class HangsUpOnScripts:
    """A server that speaks enough RESP for redis-py's connection handshake (+OK to every
    command) and closes the connection when a script arrives: a Redis lost mid-batch."""

    def __init__(self) -> None:
        self.scripts_seen = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                count = int((await reader.readline())[1:])
                parts = []
                for _ in range(count):
                    size = int((await reader.readline())[1:])
                    parts.append((await reader.readexactly(size + 2))[:-2])
                if parts[0].upper() == b"EVALSHA":
                    self.scripts_seen += 1
                    await asyncio.sleep(0.02)  # the rest of the batch arrives, unanswered
                    break
                writer.write(b"+OK\r\n")
        except (ValueError, IndexError, asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_connection_lost_mid_batch_fails_every_call_of_it_and_is_dropped() -> None:
    """Fail closed: no call of the batch waits for an answer that will not come, none is
    sent again, and the connection is not kept for the next batch."""
    server = HangsUpOnScripts()
    client = redis.Redis.from_url(await server.start())
    script = RedisScript(client, INCR)
    answers = await asyncio.gather(*(script(["k"], []) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(a, (redis.ConnectionError, OSError)) for a in answers), answers
    assert server.scripts_seen == 1  # none was sent again on another connection
    assert script.idle == 0
    await script.close()
    await client.aclose()
    await server.stop()
