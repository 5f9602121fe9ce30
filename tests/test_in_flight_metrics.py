"""dragoman_requests_in_flight and its peak: the requests a worker holds, sampled each
second from the count server.max_in_flight bounds, scraped from the metrics listener."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from dragoman.demo.runner import DemoStack
from overload_support import HeldUpstream
from test_metrics import Scrape, scrape

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"
CURRENT = "dragoman_requests_in_flight"
PEAK = "dragoman_requests_in_flight_peak"


def alice(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


async def scraped_until(
    http: aiohttp.ClientSession, stack: DemoStack, wanted: Callable[[Scrape], bool]
) -> Scrape:
    """Scrapes until ``wanted`` holds (a sample is taken each second), for at most 10 s."""
    deadline = time.monotonic() + 10
    while True:
        found = await scrape(http, stack)
        if wanted(found):
            return found
        assert time.monotonic() < deadline, {
            k: v for k, v in found.samples.items() if "flight" in k[0]
        }
        await asyncio.sleep(0.1)


async def hold(
    stack: DemoStack, held: HeldUpstream, http: aiohttp.ClientSession, count: int
) -> list[asyncio.Task[int]]:
    async def one() -> int:
        async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as answer:
            return answer.status

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await held.wait_for(count)
    return tasks


async def test_requests_held_at_the_upstream_show_as_in_flight(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"upstream": {"url": held.url}})
    tasks = await hold(stack, held, http, 3)
    found = await scraped_until(http, stack, lambda s: s.value(CURRENT) == 3)
    assert found.value(PEAK) == 3
    held.release.set()
    assert await asyncio.gather(*tasks) == [200, 200, 200]


async def test_the_gauges_fall_back_to_zero_once_the_requests_are_answered(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"upstream": {"url": held.url}})
    tasks = await hold(stack, held, http, 2)
    await scraped_until(http, stack, lambda s: s.value(CURRENT) == 2)
    held.release.set()
    await asyncio.gather(*tasks)
    # The first sample after the answers still shows their peak; the next one does not.
    await scraped_until(http, stack, lambda s: s.value(CURRENT) == 0 and s.value(PEAK) == 0)


async def test_a_burst_between_two_samples_still_shows_in_the_peak(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"upstream": {"url": held.url}})
    await scraped_until(http, stack, lambda s: s.has(CURRENT))
    tasks = await hold(stack, held, http, 4)
    held.release.set()  # answered at once: the count is back to 0 before any sample
    await asyncio.gather(*tasks)
    found = await scraped_until(http, stack, lambda s: s.value(PEAK) == 4)
    assert found.value(CURRENT) == 0


async def test_refused_requests_past_the_bound_are_not_counted_in_flight(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"server": {"max_in_flight": 2}, "upstream": {"url": held.url}})
    tasks = await hold(stack, held, http, 2)
    async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as refused:
        assert refused.status == 503
    found = await scraped_until(http, stack, lambda s: s.value(CURRENT) == 2)
    assert found.value(PEAK) == 2  # at the bound, never past it
    held.release.set()
    await asyncio.gather(*tasks)
