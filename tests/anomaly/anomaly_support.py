"""Helpers of the anomaly tests: the demo stack with anomaly rules, tokens on the moved
clock, and one sensitive request whose outcome says whether dragoman forwarded it.

The proxy's clock moves (minutes, not seconds) while the platform checks the minted
tokens on real time, so the platform may refuse a token minted "in the future". What these
tests look at is dragoman's decision: a request is ``forwarded`` when it reached the
platform (whatever the platform answered); otherwise the outcome is dragoman's problem
code. A refused request never reaches the platform.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from dragoman.alerts.log import LOGGER
from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
ALICE = ("alice", "acct-1001", "cus_alice")
BOB = ("bob", "acct-2002", "cus_bob")
CARD = {"card_number": "4000056655665556", "exp_month": 1, "exp_year": 2031}
"""A Luhn-valid test card number: it must never show up in an alert."""
FORWARDED = "forwarded"


class MovableClock:
    """Real time plus an offset the test advances."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass(frozen=True)
class Backend:
    name: str
    redis_url: str | None


DEFAULT_RULES = ("changes_burst", "changes_above_baseline", "card_testing")


def anomaly_overrides(backend: Backend, rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Only ``rules`` (the default rules disabled), and no rate limits (they would answer
    first)."""
    no_defaults = {name: {"disabled": True} for name in DEFAULT_RULES if name not in rules}
    anomaly: dict[str, Any] = {"backend": backend.name, "rules": {**no_defaults, **rules}}
    if backend.redis_url is not None:
        anomaly["redis_url"] = backend.redis_url
    return {"anomaly": anomaly, "limits": {"enabled": False}, **extra}


@dataclass
class Caller:
    """One demo account calling dragoman through real HTTP, with tokens minted on the
    proxy's (moved) clock."""

    stack: DemoStack
    clock: MovableClock
    http: aiohttp.ClientSession
    who: tuple[str, str, str] = ALICE
    signed_in_ago: float = 0.0
    """How long before each request the caller signed in (``auth_time``)."""
    last_token: str = ""
    last_problem: dict[str, Any] | None = None
    last_headers: dict[str, str] | None = None

    def token(self) -> str:
        now = int(self.clock())
        subject, account, _ = self.who
        claims = self.stack.issuer.claims(
            subject,
            account,
            roles=["billing_admin"],
            iat=now,
            nbf=now,
            exp=now + 600,
            auth_time=int(now - self.signed_in_ago),
        )
        self.last_token = self.stack.issuer.sign(claims)
        return self.last_token

    def path(self, suffix: str = "") -> str:
        return f"/v1/customers/{self.who[2]}{suffix}"

    async def send(self, method: str, path: str, body: Any = None) -> str:
        """``forwarded`` when the request reached the platform, else dragoman's code."""
        before = len(self.stack.platform.seen)
        async with self.http.request(
            method,
            self.stack.urls["proxy"] + path,
            headers={"Authorization": f"Bearer {self.token()}"},
            json=body,
        ) as response:
            self.last_headers = dict(response.headers)
            if len(self.stack.platform.seen) > before:
                self.last_problem = None
                return FORWARDED
            self.last_problem = await response.json()
            return str(self.last_problem["code"])

    async def add_card(self) -> str:
        return await self.send("POST", self.path("/payment-methods"), CARD)

    async def delete_card(self, pm: str = "pm_gone") -> str:
        return await self.send("DELETE", self.path(f"/payment-methods/{pm}"))

    async def set_default(self) -> str:
        return await self.send(
            "PUT", self.path("/default-payment-method"), {"payment_method": "pm_gone"}
        )

    async def list_cards(self) -> str:
        return await self.send("GET", self.path("/payment-methods"))

    async def changes(self, count: int) -> list[str]:
        return [await self.set_default() for _ in range(count)]


def anomaly_alerts(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The anomaly alert lines the log sink wrote."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.getMessage().startswith("alert anomaly ")
    ]


def alert_fields(line: str) -> dict[str, Any]:
    import json

    return dict(json.loads(line.split(" ", 2)[2])["fields"])


def capture_alerts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
