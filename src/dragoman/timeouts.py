"""Time limits on awaits that never lose a cancellation.

``asyncio.wait_for`` on Python 3.11 returns the awaited result when its task is cancelled
just as that work completes (CPython gh-86296, fixed in 3.12): the cancellation is lost. A
background loop asked to stop then goes on, and whoever awaits its end waits for good: a
worker's key-set refresh loop, cancelled as a refresh's query returned, hung the worker's
shutdown. ``asyncio.timeout`` counts cancellations and raises them. ``asyncio.wait_for`` is
banned in this package (ruff, pyproject.toml); use :func:`within`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(seconds: float | None, work: Awaitable[T]) -> T:
    """``await work`` for at most ``seconds`` (None: no limit); TimeoutError past it."""
    async with asyncio.timeout(seconds):
        return await work
