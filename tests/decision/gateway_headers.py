"""What a gateway in front of the decision API owes the caller's answers: the security
headers dragoman itself sets on every answer in proxy mode (its defaults)."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from dragoman.browser.headers import security_headers
from dragoman.settings import BrowserSettings

SECURITY_HEADERS = security_headers(BrowserSettings())


def assert_security_headers(
    response: aiohttp.ClientResponse, expected: Mapping[str, str] = SECURITY_HEADERS
) -> None:
    """Each of ``expected`` exactly once, with its value."""
    for name, value in expected.items():
        assert response.headers.getall(name, []) == [value], name
