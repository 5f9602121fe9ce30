"""Headless Chromium (Debian's, at /usr/bin/chromium) driven by Playwright, for the tests of
what a real browser does with dragoman's answers. Playwright cannot download browsers here;
`make test` installs Debian's chromium when it is missing. Without it these tests skip
locally and fail under CI=true."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("DRAGOMAN_TEST_CHROMIUM", "/usr/bin/chromium"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
async def chromium() -> AsyncIterator[object]:
    """A headless Chromium; every test gets a fresh browser (no shared cookies or cache)."""
    if not CHROMIUM.exists():
        message = f"Chromium is missing at {CHROMIUM} (Debian: apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """Each session test runs with sessions in memory and in Redis."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return "redis", url
    return "memory", None
