"""Helpers of the rate-limit tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

from dragoman.demo.runner import DemoStack
from dragoman.limits.rules import Rule

CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"
"""A Redis URL nothing listens on (the limiter cannot decide)."""
ADDRESS = "/v1/customers/{customer}/billing-address"
NEW_ADDRESS = {"line1": "2 Elm Street", "city": "Springfield", "country": "US"}
PM = "/v1/customers/{customer}/payment-methods"
CUSTOMERS = {"acct-1001": "cus_alice", "acct-2002": "cus_bob"}


class FrozenClock:
    """A clock that stands still until the test moves it (no sleeping, no refill by
    accident while a test runs)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique(name: str) -> str:
    """A rule name no other test (or run) shares: tests share one Redis."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


def rule(
    name: str, *, rate: str, burst: int, per: str = "account", tiers: list[str] | None = None
) -> Rule:
    return Rule.of(unique(name), per, rate, burst, tiers)  # type: ignore[arg-type]


def limits(*rules: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """Settings overrides with these rules (each a RateLimitRuleSettings table)."""
    return {"limits": {"rules": list(rules), **settings}}


def auth(stack: DemoStack, account: str, user: str = "alice") -> dict[str, str]:
    token = stack.issuer.token(user, account, roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}
