"""Requests in flight, sampled for the metrics: how close each worker runs to
``server.max_in_flight``, the bound past which it refuses (503 ``overloaded``).

A gauge counted up and down by every request would cost two metric writes per request (and,
with several workers, two writes to the worker's metrics file). The proxy already counts
what it has in flight for its bound, so a sampler copies that count once a second, with the
highest count since the previous sample: a burst shorter than the interval still shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Gauge

SAMPLE_EVERY = 1.0
"""Seconds between samples (a scrape sees the last one)."""


async def sample_in_flight(
    take: Callable[[], tuple[int, int]],
    current: Gauge,
    peak: Gauge,
    every: float = SAMPLE_EVERY,
) -> None:
    """Forever (run it as a task): set ``current`` and ``peak`` from ``take()``, which
    answers the count now and the most since its previous call."""
    while True:
        now, most = take()
        current.set(now)
        peak.set(most)
        await asyncio.sleep(every)
