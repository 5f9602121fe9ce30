"""dragoman.timeouts.within: a time limit on an await that never loses a cancellation
(asyncio.wait_for on Python 3.11 does, and is banned from src by ruff)."""

from __future__ import annotations

import asyncio

import pytest

from dragoman.timeouts import within


async def test_within_returns_what_the_work_returns() -> None:
    async def work() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await within(5, work()) == "done"


async def test_within_raises_timeout_error_past_its_limit() -> None:
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.Event().wait())


async def test_a_cancellation_arriving_as_the_work_completes_is_raised_not_lost() -> None:
    loop = asyncio.get_running_loop()
    work: asyncio.Future[int] = loop.create_future()

    async def bounded() -> str:
        await within(10, work)
        return "returned"

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    work.set_result(1)  # the work completes...
    task.cancel()  # ...as its task is asked to stop
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_that_awaits_bounded_work_stops_when_cancelled_as_the_work_completes() -> None:
    """The shape of a background refresh loop (the key ring's, the shipper's): cancelled just
    as a bounded query returns, it must end rather than go on to its next sleep."""
    loop = asyncio.get_running_loop()
    works: list[asyncio.Future[int]] = []

    async def refresh_forever() -> None:
        while True:
            work: asyncio.Future[int] = loop.create_future()
            works.append(work)
            await within(10, work)
            await asyncio.sleep(3600)

    task = asyncio.create_task(refresh_forever())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    works[0].set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(5, task)
    assert task.cancelled()
