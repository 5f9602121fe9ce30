"""Report-only rules: what a rule under evaluation would have decided, recorded, not done.

A catalog or policy rule marked report-only (a customer binding, a role's definition, a
tier's step-up, a rate-limit rule, an anomaly rule) still runs on every request it covers.
Where it would refuse, the request's audit record gains a ``would_deny`` entry naming the
rule and the code and reason the refusal would carry, and the request goes on to the next
stage. ``dragoman audit report`` summarises them over a time range, so an operator can
switch the rule to enforcing knowing whom it would stop.

Only rules layered over the core can be report-only. Authentication, the browser checks,
the operation's resolution, the account mapping (its existence, status, freshness and
grants), minting and signing always enforce: a request that would fail one of them is
refused whatever rules are in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dragoman.pipeline.context import RequestContext
    from dragoman.pipeline.errors import Denial


@dataclass(frozen=True, slots=True)
class WouldDeny:
    rule: str
    """The rule's settings key: ``policy.roles.support``, ``limits.rules.burst``..."""
    code: str
    reason: str

    def as_record(self) -> dict[str, str]:
        return {"rule": self.rule, "code": self.code, "reason": self.reason}


def report(ctx: RequestContext, rule: str, denial: Denial) -> None:
    """Record that ``rule`` would have refused the request with ``denial``."""
    ctx.would_deny.append(WouldDeny(rule, denial.code, denial.reason))
