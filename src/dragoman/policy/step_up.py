"""Step-up authentication (RFC 9470): risky tiers need a recent or strong enough sign-in.

``policy.step_up`` maps a risk tier to what the caller's sign-in must show for the
operations of that tier: an ``auth_time`` at most ``max_age`` old, an ``acr`` among
``acr_values``, or both. Both claims come from the verified credential only; a missing or
non-integer ``auth_time`` never satisfies ``max_age``, nor does one further in the future
than the clock skew allowed. A request that falls short is refused 401
``insufficient_user_authentication`` with the RFC 9470 challenge
(``WWW-Authenticate: Bearer error="insufficient_user_authentication", error_description=...,
max_age=..., acr_values=...``) naming the tier's whole requirement, so the client knows what
to ask its identity provider for; nothing is forwarded.

The stage runs right after the operation is resolved (its tier is known) and before the
mapping is looked up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from dragoman.identity.principal import Principal
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import StepUpRequired
from dragoman.pipeline.report_only import report
from dragoman.settings import RiskTier, StepUpSettings

CLOCK_SKEW = 30.0
"""How far in the future an ``auth_time`` may be (clocks differ) and still count as now."""


class StepUpStage:
    name = "step_up"

    def __init__(
        self,
        requirements: Mapping[RiskTier, StepUpSettings],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._requirements = dict(requirements)
        self._clock = clock

    async def __call__(self, ctx: RequestContext) -> None:
        assert ctx.principal is not None and ctx.operation is not None  # earlier stages
        tier = ctx.operation.tier
        needed = self._requirements.get(tier)
        if needed is None:
            return
        if not needed.report_only:
            self.check(ctx.principal, needed)
            return
        try:
            self.check(ctx.principal, needed)
        except StepUpRequired as denial:
            report(ctx, f"policy.step_up.{tier}", denial)

    def unmet(self, principal: Principal, tier: RiskTier) -> dict[str, object] | None:
        """What ``principal``'s sign-in lacks for operations of ``tier`` (an enforced
        requirement only; None when it is met or there is none): the reason, and the
        tier's whole requirement as its challenge names it (whoami's hint)."""
        needed = self._requirements.get(tier)
        if needed is None or needed.report_only:
            return None
        failure = self._failure(principal, needed)
        if failure is None:
            return None
        hint: dict[str, object] = {"reason": failure[0]}
        if needed.max_age is not None:
            hint["max_age"] = int(needed.max_age)
        if needed.acr_values:
            hint["acr_values"] = list(needed.acr_values)
        return hint

    def check(self, principal: Principal, needed: StepUpSettings) -> None:
        """Raises StepUpRequired when ``principal``'s sign-in does not meet ``needed``."""
        failure = self._failure(principal, needed)
        if failure is not None:
            reason, detail = failure
            raise StepUpRequired(
                reason,
                detail,
                max_age=None if needed.max_age is None else int(needed.max_age),
                acr_values=tuple(needed.acr_values),
            )

    def _failure(self, principal: Principal, needed: StepUpSettings) -> tuple[str, str] | None:
        if needed.acr_values and principal.acr not in needed.acr_values:
            return "acr_insufficient", "A stronger authentication level is required."
        if needed.max_age is not None:
            auth_time = principal.auth_time
            if auth_time is None:
                return "auth_time_missing", "A recent authentication is required."
            age = self._clock() - auth_time
            if age > needed.max_age or age < -CLOCK_SKEW:
                return "auth_too_old", "More recent authentication is required."
        return None
