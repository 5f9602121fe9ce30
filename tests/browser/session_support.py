"""Helpers of the session and CSRF tests: stacks with sessions in memory or in Redis, the
handshake, and a clock the tests move instead of sleeping."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}
COOKIE = "__Host-dragoman-csrf"


class MovableClock:
    """Real time plus an offset the test advances."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def browser_overrides(
    backend: str, redis_url: str | None, key: str | None = None
) -> dict[str, Any]:
    browser: dict[str, Any] = {"csrf": "browser"}
    if key is not None:
        browser |= {"csrf_key": key, "csrf_key_file": None}
    if backend == "redis":
        browser |= {"session_backend": "redis", "session_redis_url": redis_url}
    return {"browser": browser}


def bearer(
    stack: DemoStack, who: str = "alice", account: str = "acct-1001", **extra: str
) -> dict[str, str]:
    token = stack.issuer.token(who, account, roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}", **extra}


@dataclass
class Handshake:
    token: str
    cookie: str
    """The raw Set-Cookie header."""
    body: dict[str, Any]


async def handshake(http: aiohttp.ClientSession, proxy: str, headers: dict[str, str]) -> Handshake:
    async with http.post(proxy + "/_dragoman/session", headers=headers) as response:
        assert response.status == 201, await response.text()
        body = await response.json()
        return Handshake(body["csrf_token"], response.headers["Set-Cookie"], body)


def with_pair(headers: dict[str, str], cookie: str | None, header: str | None) -> dict[str, str]:
    out = dict(headers)
    if cookie is not None:
        out["Cookie"] = f"{COOKIE}={cookie}"
    if header is not None:
        out["X-CSRF-Token"] = header
    return out


def audit_lines(stack: DemoStack) -> list[dict[str, Any]]:
    path = stack.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]
