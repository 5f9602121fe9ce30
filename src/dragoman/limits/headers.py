"""RateLimit-Policy and RateLimit field values (draft-ietf-httpapi-ratelimit-headers).

``RateLimit-Policy: "account";q=600;w=60``: the rule's quota ``q`` per window ``w``
(seconds), its sustained rate. ``RateLimit: "account";r=0;t=5``: what remains of its
burst now (``r``) and the seconds until a request conforms again (``t``, rounded up).
Only refusals carry them: successful answers stay cheap (no header work on the hot path),
and a client learns the policy from its first 429. Rule names are restricted by the
settings to characters a structured-field string holds without escaping.
"""

from __future__ import annotations

from dragoman.limits.gcra import Decision, whole_seconds
from dragoman.limits.rules import Rule


def policy_field(rule: Rule) -> str:
    return f'"{rule.name}";q={rule.count};w={rule.period}'


def state_field(rule: Rule, decision: Decision) -> str:
    wait = decision.retry_after if not decision.allowed else 0
    return f'"{rule.name}";r={decision.remaining};t={whole_seconds(wait) if wait else 0}'
