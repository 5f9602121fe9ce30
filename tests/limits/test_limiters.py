"""The in-memory and the Redis limiters decide the same way (the GCRA of
dragoman.limits.gcra), over several rules at once; Redis keys are hashed and expire."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from limits_support import CLOSED_PORT_REDIS, FrozenClock, rule

from dragoman.limits.gcra import MICROSECONDS, decide
from dragoman.limits.memory import MemoryLimiter
from dragoman.limits.redis_limiter import RedisLimiter, key_of
from dragoman.limits.rules import Check, Limiter, LimiterUnavailable

ALICE = "account:acct-1001"
BOB = "account:acct-2002"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request: pytest.FixtureRequest, clock: FrozenClock) -> AsyncIterator[Limiter]:
    """Each behaviour test runs on both backends, on the same moved clock."""
    made: Limiter
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        made = RedisLimiter(redis.Redis.from_url(url), clock=clock)
    else:
        made = MemoryLimiter(clock=clock)
    try:
        yield made
    finally:
        await made.close()


async def allowed(limiter: Limiter, *checks: Check) -> bool:
    return (await limiter.decide(checks)).allowed


async def test_a_burst_passes_then_the_limiter_refuses(limiter: Limiter) -> None:
    writes = rule("writes", rate="60/min", burst=3)
    results = [await allowed(limiter, Check(writes, ALICE)) for _ in range(4)]
    assert results == [True, True, True, False]


async def test_time_gives_back_one_request_per_emission_interval(
    limiter: Limiter, clock: FrozenClock
) -> None:
    writes = rule("writes", rate="60/min", burst=2)
    for _ in range(2):
        assert await allowed(limiter, Check(writes, ALICE))
    refused = await limiter.decide([Check(writes, ALICE)])
    assert not refused.allowed
    assert refused.decisions[0].retry_after == MICROSECONDS  # one every second
    clock.advance(1.0)
    assert await allowed(limiter, Check(writes, ALICE))
    assert not await allowed(limiter, Check(writes, ALICE))


async def test_a_clock_stepped_back_an_hour_does_not_lock_a_subject_out_for_the_hour(
    limiter: Limiter, clock: FrozenClock
) -> None:
    # An NTP step or a restored snapshot: the subject's stored TAT is an hour ahead of
    # the clock. It starts afresh (a burst, then refusals) instead of waiting an hour.
    writes = rule("writes", rate="60/min", burst=2)
    assert await allowed(limiter, Check(writes, ALICE))
    clock.advance(-3600.0)
    results = [await allowed(limiter, Check(writes, ALICE)) for _ in range(3)]
    assert results == [True, True, False]


async def test_subjects_are_counted_apart(limiter: Limiter) -> None:
    writes = rule("writes", rate="60/min", burst=1)
    assert await allowed(limiter, Check(writes, ALICE))
    assert not await allowed(limiter, Check(writes, ALICE))
    assert await allowed(limiter, Check(writes, BOB))


async def test_a_request_passes_only_if_every_rule_allows(limiter: Limiter) -> None:
    tight = rule("tight", rate="60/min", burst=1)
    loose = rule("loose", rate="600/min", burst=10)
    both = (Check(tight, ALICE), Check(loose, ALICE))
    assert await allowed(limiter, *both)
    verdict = await limiter.decide(both)
    assert not verdict.allowed
    assert [d.allowed for d in verdict.decisions] == [False, True]
    assert verdict.binding() == 0


async def test_a_refused_request_consumes_nothing_from_any_rule(limiter: Limiter) -> None:
    tight = rule("tight", rate="60/min", burst=1)
    loose = rule("loose", rate="60/min", burst=3)
    both = (Check(tight, ALICE), Check(loose, ALICE))
    assert (await limiter.decide(both)).decisions[1].remaining == 2
    for _ in range(5):
        assert not await allowed(limiter, *both)
    alone = await limiter.decide([Check(loose, ALICE)])
    assert alone.allowed
    assert alone.decisions[0].remaining == 1  # only the first request was counted


async def test_decisions_match_the_gcra_function_step_by_step(
    limiter: Limiter, clock: FrozenClock
) -> None:
    rules = [rule("a", rate="10/s", burst=4), rule("b", rate="7/min", burst=2)]
    tats: dict[str, int | None] = {r.name: None for r in rules}
    rng = random.Random(7)
    for _ in range(300):
        clock.advance(rng.choice([0.0, 0.0, 0.01, 0.1, 1.0, 9.0]))
        now = int(clock() * MICROSECONDS)
        chosen = [r for r in rules if rng.random() < 0.7] or rules[:1]
        expected = [decide(tats[r.name], now, r.interval, r.tolerance) for r in chosen]
        verdict = await limiter.decide([Check(r, ALICE) for r in chosen])
        assert list(verdict.decisions) == expected
        if verdict.allowed:
            for r, d in zip(chosen, expected, strict=True):
                tats[r.name] = d.tat


# -- Redis only --------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_keys_hash_the_subject(
    redis_url: str, redis_client: redis.Redis, clock: FrozenClock
) -> None:
    limiter = RedisLimiter(redis.Redis.from_url(redis_url), clock=clock)
    writes = rule("writes", rate="60/min", burst=3)
    await limiter.decide([Check(writes, ALICE)])
    await limiter.close()
    keys = [k async for k in redis_client.scan_iter(match=f"dragoman:rl:{writes.name}:*")]
    assert keys == [f"dragoman:rl:{writes.name}:{hashlib.sha256(ALICE.encode()).hexdigest()}"]
    assert keys == [key_of(Check(writes, ALICE))]
    assert "acct-1001" not in keys[0]


@pytest.mark.redis
async def test_redis_keys_expire_when_the_subject_would_be_idle(
    redis_url: str, redis_client: redis.Redis, clock: FrozenClock
) -> None:
    limiter = RedisLimiter(redis.Redis.from_url(redis_url), clock=clock)
    writes = rule("writes", rate="60/min", burst=3)
    for _ in range(2):
        decision = (await limiter.decide([Check(writes, ALICE)])).decisions[0]
    await limiter.close()
    idle_ms = decision.reset_after // 1000  # two requests: idle again in 2 s
    assert idle_ms == 2000
    pttl = await redis_client.pttl(key_of(Check(writes, ALICE)))
    assert 0 < pttl <= idle_ms


@pytest.mark.redis
async def test_a_refused_redis_decision_writes_nothing(
    redis_url: str, redis_client: redis.Redis, clock: FrozenClock
) -> None:
    limiter = RedisLimiter(redis.Redis.from_url(redis_url), clock=clock)
    tight = rule("tight", rate="60/min", burst=1)
    loose = rule("loose", rate="60/min", burst=3)
    await limiter.decide([Check(tight, ALICE)])
    before = await redis_client.get(key_of(Check(tight, ALICE)))
    refused = await limiter.decide([Check(tight, ALICE), Check(loose, ALICE)])
    await limiter.close()
    assert not refused.allowed
    assert await redis_client.get(key_of(Check(tight, ALICE))) == before
    assert await redis_client.exists(key_of(Check(loose, ALICE))) == 0


@pytest.mark.redis
async def test_without_a_clock_the_redis_server_time_decides(
    redis_url: str, redis_client: redis.Redis
) -> None:
    limiter = RedisLimiter(redis.Redis.from_url(redis_url))
    slow = rule("slow", rate="5/h", burst=2)  # no refill while the test runs
    results = [(await limiter.decide([Check(slow, ALICE)])) for _ in range(3)]
    await limiter.close()
    assert [v.allowed for v in results] == [True, True, False]
    seconds, micros = await redis_client.time()
    server_now = seconds * MICROSECONDS + micros
    interval = slow.interval
    # The stored TAT is two intervals after the server's time of the first request.
    assert 0 <= (server_now + 2 * interval) - results[1].decisions[0].tat < 60 * MICROSECONDS


async def test_an_unreachable_redis_cannot_decide() -> None:
    limiter = RedisLimiter.from_url(CLOSED_PORT_REDIS, timeout=0.5)
    with pytest.raises(LimiterUnavailable):
        await limiter.decide([Check(rule("writes", rate="60/min", burst=1), ALICE)])
    await limiter.close()


async def test_a_redis_that_never_answers_cannot_decide_within_the_timeout() -> None:
    """A server that accepts and stays silent (a hung Redis): the decision is refused once
    the limiter's timeout has passed, never waited for without end."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RedisLimiter.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        with pytest.raises(LimiterUnavailable, match="TimeoutError"):
            await limiter.decide([Check(rule("writes", rate="60/min", burst=1), ALICE)])
    finally:
        for writer in silent:
            writer.close()
        server.close()
        await limiter.close()


# -- memory only -------------------------------------------------------------------------


async def test_the_memory_limiter_sweeps_idle_subjects(clock: FrozenClock) -> None:
    limiter = MemoryLimiter(clock=clock, sweep_every=60)
    writes = rule("writes", rate="60/min", burst=5)
    for n in range(10):
        await limiter.decide([Check(writes, f"account:{n}")])
    assert len(limiter) == 10
    clock.advance(61)  # every subject idle, and a sweep is due
    await limiter.decide([Check(writes, ALICE)])
    assert len(limiter) == 1


async def test_a_full_memory_limiter_refuses_new_subjects_and_keeps_live_ones(
    clock: FrozenClock,
) -> None:
    limiter = MemoryLimiter(clock=clock, max_keys=2)
    writes = rule("writes", rate="60/min", burst=1)
    assert await allowed(limiter, Check(writes, ALICE))
    assert await allowed(limiter, Check(writes, BOB))
    with pytest.raises(LimiterUnavailable):
        await limiter.decide([Check(writes, "account:acct-3003")])
    assert not await allowed(limiter, Check(writes, ALICE))  # not forgotten
    clock.advance(1.0)  # Alice's and Bob's keys are idle now: swept to make room
    assert await allowed(limiter, Check(writes, "account:acct-3003"))
