"""Rules, the checks one request makes, and the Limiter protocol both backends follow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from dragoman.limits.gcra import Decision, burst_tolerance, emission_interval
from dragoman.settings import LimitsSettings, parse_rate

Per = Literal["account", "customer"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One configured limit, with its GCRA parameters worked out once at start."""

    name: str
    per: Per
    tiers: frozenset[str] | None
    """The risk tiers it counts (None: every tier)."""
    count: int
    period: int
    """Seconds: ``count`` requests per ``period`` is the sustained rate."""
    burst: int
    interval: int
    """Emission interval, microseconds."""
    tolerance: int
    """Burst tolerance, microseconds."""
    report_only: bool = False
    """Counted on its own; over the limit is recorded (``would_deny``), never refused."""

    @classmethod
    def of(
        cls,
        name: str,
        per: Per,
        rate: str,
        burst: int,
        tiers: Sequence[str] | None = None,
        *,
        report_only: bool = False,
    ) -> Rule:
        count, period = parse_rate(rate)
        interval = emission_interval(count, period)
        return cls(
            name=name,
            per=per,
            tiers=frozenset(tiers) if tiers is not None else None,
            count=count,
            period=period,
            burst=burst,
            interval=interval,
            tolerance=burst_tolerance(interval, burst),
            report_only=report_only,
        )

    def counts(self, tier: str) -> bool:
        return self.tiers is None or tier in self.tiers


def rules_from_settings(settings: LimitsSettings) -> tuple[Rule, ...]:
    if not settings.enabled:
        return ()
    return tuple(
        Rule.of(r.name, r.per, r.rate, r.burst, r.tiers, report_only=r.report_only)
        for r in settings.rules
    )


@dataclass(frozen=True, slots=True)
class Check:
    """One rule applied to one verified subject (``account:...`` or ``customer:...``)."""

    rule: Rule
    subject: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision over every check of a request: allowed only if each one is, and then
    every one was counted; refused, none was."""

    decisions: tuple[Decision, ...]
    """One per check, in the order of the checks."""

    @property
    def allowed(self) -> bool:
        return all(d.allowed for d in self.decisions)

    def binding(self) -> int:
        """Index of the check that decides: the refusal that lasts longest, or (allowed)
        the rule closest to refusing."""
        if self.allowed:
            return min(range(len(self.decisions)), key=lambda i: self.decisions[i].remaining)
        return max(range(len(self.decisions)), key=lambda i: self.decisions[i].retry_after)


class LimiterUnavailable(Exception):
    """The limiter could not decide (Redis down or slow, or the memory limiter full); the
    stage fails closed."""


class Limiter(Protocol):
    async def decide(self, checks: Sequence[Check]) -> Verdict:
        """Decide every check at once; consume for all of them only when all allow.
        Raises LimiterUnavailable when no decision can be made."""
        ...

    async def ping(self) -> None:
        """Return when the limiter could decide now (for /readyz); raise
        LimiterUnavailable when it could not."""
        ...

    async def close(self) -> None: ...
