"""RateLimitStage: counts the request against every rule covering its risk tier.

It runs after the account mapping (step 4), so every subject it counts is verified: the
cloud account of the credential (issuer and subject when the credential names none) and
the mapped payment customer, never an IP address or a header the client chooses. A
refusal is 429 ``rate_limited`` naming the rule that lasts longest, with Retry-After and
the RateLimit headers of that rule (:mod:`dragoman.limits.headers`); nothing is counted
for a refused request. A report-only rule is counted apart and records where it would
refuse (:mod:`dragoman.pipeline.report_only`).

Failing closed (SEMANTICS §6): when the shared limiter cannot decide, a write is refused
(503 ``rate_limit_unavailable``); so is a read, unless a per-instance ``local`` limiter is
configured, which then limits reads on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from dragoman.catalog.model import Operation
from dragoman.limits.gcra import whole_seconds
from dragoman.limits.headers import policy_field, state_field
from dragoman.limits.rules import Check, Limiter, LimiterUnavailable, Rule, Verdict
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import RateLimited, RateLimitUnavailable
from dragoman.pipeline.report_only import report
from dragoman.settings import RISK_TIERS
from dragoman.settings.limits import SESSION_TIER, LimitTier

log = logging.getLogger(__name__)


def is_read(operation: Operation) -> bool:
    """Only a GET/HEAD of the read tier counts as a read for the fallback."""
    return not operation.is_write and operation.tier == "read"


def plain_key(value: str) -> str:
    """Subjects as they are (a stage without the proxy's keyed index: tests)."""
    return value


def subject_of(rule: Rule, ctx: RequestContext, key: Callable[[str], str] = plain_key) -> str:
    """The counted subject, through ``key``: the proxy passes the mapping store's keyed
    blind index, so a limiter's keys never reveal an account or a customer (their ids have
    too little entropy for a plain hash to hide them)."""
    principal = ctx.principal
    if principal is None:
        raise RuntimeError("the rate-limit stage runs after authentication")
    if rule.per == "customer":
        if ctx.mapping is None:
            raise RuntimeError("the rate-limit stage runs after the account mapping")
        return "customer:" + ctx.mapping.customer_index
    if principal.cloud_account is not None:
        return "account:" + key(principal.cloud_account)
    return "principal:" + key(f"{principal.issuer} {principal.subject}")


class RateLimitStage:
    name = "rate_limit"

    def __init__(
        self,
        rules: Sequence[Rule],
        limiter: Limiter | None,
        *,
        local: Limiter | None = None,
        key: Callable[[str], str] = plain_key,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        """``limiter`` decides (None: no rules); ``local`` is the per-instance fallback for
        reads when ``limiter`` cannot decide (None: reads are refused too). ``observe(rule,
        outcome)`` counts each rule's decision: ``allowed``, ``limited``, or ``unavailable``
        when the shared limiter could not decide (a fallback decision is counted too)."""
        self._key = key
        self._observe = observe
        enforced = [r for r in rules if not r.report_only]
        tiers = (*RISK_TIERS, SESSION_TIER)
        self._by_tier = {t: tuple(r for r in enforced if r.counts(t)) for t in tiers}
        self._reported_by_tier = {
            t: tuple(r for r in rules if r.report_only and r.counts(t)) for t in tiers
        }
        self._limiter = limiter
        self._local = local
        self._down = False

    async def __call__(self, ctx: RequestContext) -> None:
        if self._limiter is None:
            return
        if ctx.operation is None:
            raise RuntimeError("the rate-limit stage runs after the operation is resolved")
        rules = self._by_tier.get(ctx.operation.tier, ())
        if rules:
            checks = [Check(rule, subject_of(rule, ctx, self._key)) for rule in rules]
            await self._decide(checks, read=is_read(ctx.operation))
        reported = self._reported_by_tier.get(ctx.operation.tier, ())
        if reported:
            await self._report(ctx, reported)

    async def _report(self, ctx: RequestContext, rules: Sequence[Rule]) -> None:
        """Report-only rules, counted apart from the enforced ones (their refusals never
        uncount an enforced rule, nor the reverse): over the limit is recorded; a limiter
        that cannot decide records nothing and refuses nothing."""
        assert self._limiter is not None
        checks = [Check(rule, subject_of(rule, ctx, self._key)) for rule in rules]
        try:
            verdict = await self._limiter.decide(checks)
        except LimiterUnavailable as exc:
            log.warning("rate limiter cannot decide report-only rules (%s)", exc)
            return
        self._count(checks, verdict)
        for check, decision in zip(checks, verdict.decisions, strict=True):
            if not decision.allowed:
                denial = refusal([check], Verdict((decision,)))
                report(ctx, f"limits.rules.{check.rule.name}", denial)

    async def check_account(self, ctx: RequestContext, tier: LimitTier = "change") -> None:
        """For the proxy's own endpoints (the session's: tier ``session``; registration:
        ``change``; whoami: ``read``), which have no catalog operation and no mapping: the
        per-account rules of ``tier``, enforced and report-only. One account cannot flood
        the session store, the audit trail or the platform's customer reads."""
        if self._limiter is None:
            return
        rules = [rule for rule in self._by_tier.get(tier, ()) if rule.per == "account"]
        if rules:
            checks = [Check(rule, subject_of(rule, ctx, self._key)) for rule in rules]
            await self._decide(checks, read=tier == "read")
        reported = [r for r in self._reported_by_tier.get(tier, ()) if r.per == "account"]
        if reported:
            await self._report(ctx, reported)

    async def check_session(self, ctx: RequestContext) -> None:
        """:meth:`check_account` for a session handshake."""
        await self.check_account(ctx, SESSION_TIER)

    async def _decide(self, checks: Sequence[Check], *, read: bool) -> None:
        assert self._limiter is not None
        try:
            verdict = await self._limiter.decide(checks)
        except LimiterUnavailable as exc:
            self._count(checks, None)
            verdict = await self._fallback(checks, read, exc)
        else:
            if self._down:
                log.warning("rate limiter answers again")
                self._down = False
        self._count(checks, verdict)
        if not verdict.allowed:
            raise refusal(checks, verdict)

    def _count(self, checks: Sequence[Check], verdict: Verdict | None) -> None:
        observe = self._observe
        if observe is None:
            return
        if verdict is None:
            for check in checks:
                observe(check.rule.name, "unavailable")
            return
        for check, decision in zip(checks, verdict.decisions, strict=True):
            observe(check.rule.name, "allowed" if decision.allowed else "limited")

    async def ping(self) -> None:
        """Raise LimiterUnavailable while the shared limiter cannot answer (/readyz)."""
        if self._limiter is not None:
            await self._limiter.ping()

    async def _fallback(
        self, checks: Sequence[Check], read: bool, error: LimiterUnavailable
    ) -> Verdict:
        if not self._down:
            log.warning("rate limiter cannot decide (%s); failing closed", error)
            self._down = True
        if self._local is None or not read:
            raise RateLimitUnavailable()
        try:
            return await self._local.decide(checks)
        except LimiterUnavailable:
            raise RateLimitUnavailable() from None

    async def close(self) -> None:
        for limiter in (self._limiter, self._local):
            if limiter is not None:
                await limiter.close()


def refusal(checks: Sequence[Check], verdict: Verdict) -> RateLimited:
    index = verdict.binding()
    rule, decision = checks[index].rule, verdict.decisions[index]
    return RateLimited(
        rule.name,
        retry_after=whole_seconds(decision.retry_after),
        policy=policy_field(rule),
        state=state_field(rule, decision),
    )
