"""Rate limit settings."""

from __future__ import annotations

import re
from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from dragoman.settings.base import Duration, Section, check_redis_url
from dragoman.settings.catalog import RiskTier

SESSION_TIER: Final = "session"
"""The tier of the browser's session endpoint (handshake, refresh, logout; no catalog
operation has it): counted by the per-account rules that list it, or list no tiers."""

LimitTier = RiskTier | Literal["session"]

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_RATE_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(value: str) -> tuple[int, int]:
    """``"600/min"`` -> (600, 60): how many requests per how many seconds."""
    match = _RATE.match(value)
    if match is None or int(match.group(1)) < 1:
        raise ValueError("a rate is a count of at least 1 per unit, like '600/min' or '10/s'")
    return int(match.group(1)), _RATE_PERIODS[match.group(2)[0]]


class RateLimitRuleSettings(Section):
    """One rate limit (a GCRA: `rate` sustained, `burst` at once) on the verified identity."""

    name: str = Field(
        ...,
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="Rule name: the 429's reason, the RateLimit header's policy, the Redis key.",
    )
    per: Literal["account", "customer"] = Field(
        ...,
        description=(
            "What is counted: `account` the verified cloud account (issuer + subject when the"
            " credential names none), `customer` the mapped payment customer."
        ),
    )
    tiers: list[LimitTier] | None = Field(
        None,
        description=(
            "Risk tiers the rule counts (unset: every tier); `session` is the browser's"
            " session endpoint: handshake, refresh and logout (per-account rules only)."
            " whoami counts as `read`."
        ),
    )
    rate: str = Field(..., description="Sustained rate: `COUNT/UNIT`, unit s, min, h or d.")
    burst: int = Field(..., ge=1, le=1_000_000, description="Requests allowed at once.")
    report_only: bool = Field(
        False,
        description=(
            "Report only: counted on its own; where it would refuse a request, the request's"
            " audit record gains a `would_deny` entry and the request goes on"
            " (`dragoman audit report`)."
        ),
    )

    @field_validator("rate")
    @classmethod
    def _rate_parses(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers_not_empty(cls, value: list[LimitTier] | None) -> list[LimitTier] | None:
        if value is not None and not value:
            raise ValueError("list at least one tier, or leave tiers unset for every tier")
        return value

    @model_validator(mode="after")
    def _sessions_per_account(self) -> RateLimitRuleSettings:
        if self.per != "account" and self.tiers is not None and SESSION_TIER in self.tiers:
            raise ValueError(
                "tiers: `session` is counted per account (a handshake has no customer yet)"
            )
        return self


def _default_rate_limits() -> list[RateLimitRuleSettings]:
    return [
        RateLimitRuleSettings(name="account", per="account", rate="600/min", burst=60),
        RateLimitRuleSettings(
            name="account-writes",
            per="account",
            tiers=["change", "destroy"],
            rate="60/min",
            burst=10,
        ),
        RateLimitRuleSettings(
            name="account-sessions", per="account", tiers=["session"], rate="60/min", burst=20
        ),
        RateLimitRuleSettings(
            name="customer-money", per="customer", tiers=["money"], rate="10/min", burst=3
        ),
    ]


class LimitsSettings(Section):
    """Rate limits keyed on the verified identity, never on an IP or a header the client
    chooses. A request must pass every rule that counts its tier; a
    refusal (429 `rate_limited`, with Retry-After) consumes nothing. The default rules:
    `account` (every tier, 600/min, burst 60) leaves a console or a script room for pages
    of reads while capping scraping at 10 requests a second; `account-writes` (change and
    destroy, 60/min, burst 10) is far above a person editing payment methods and far below
    a script enumerating cards; `account-sessions` (the browser's session handshakes,
    refreshes and logouts, 60/min, burst 20) keeps one account from filling the session
    store, on a budget of its own so that tabs of two accounts taking the one CSRF cookie
    from each other never use up the writes' budget; `customer-money` (money, 10/min,
    burst 3) bounds what a stolen credential can move per payment customer, whichever
    account asks."""

    enabled: bool = Field(True, description="Apply the rules (off: no request is limited).")
    rules: list[RateLimitRuleSettings] = Field(
        default_factory=_default_rate_limits, description="The rules (defaults above)."
    )
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description=(
            "Where the counters live: `memory` (one process: N instances or workers allow N"
            " times the limits) or `redis` (shared: one decision per request, atomic)."
        ),
    )
    redis_url: str | None = Field(
        None, description="Redis URL of the shared counters (`redis://` or `rediss://`)."
    )
    fallback: Literal["refuse", "local"] = Field(
        "refuse",
        description=(
            "When Redis does not answer, writes are always refused (503"
            " `rate_limit_unavailable`); reads are refused too (`refuse`) or limited by"
            " per-instance counters (`local`; /readyz then answers 200 `degraded` rather"
            " than 503 while the Redis backends are down)."
        ),
    )
    timeout: Duration = Field(
        0.5, gt=0, le=10, description="How long one Redis decision may take before it fails."
    )
    max_keys: int = Field(
        100_000,
        ge=1,
        description=(
            "Most counters the in-memory limiter holds; idle ones are swept, and when it is"
            " still full a new subject is refused (503) rather than resetting someone's limit."
        ),
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @field_validator("rules")
    @classmethod
    def _names_unique(cls, value: list[RateLimitRuleSettings]) -> list[RateLimitRuleSettings]:
        names = [rule.name for rule in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _redis_backend_complete(self) -> LimitsSettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("the redis backend needs redis_url")
        return self
