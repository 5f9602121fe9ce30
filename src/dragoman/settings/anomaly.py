"""Anomaly detection settings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dragoman.settings.base import Duration, Section, check_redis_url

AnomalyAction = Literal["alert", "step_up", "block"]
AnomalyKind = Literal["threshold", "baseline", "card_testing"]
_RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SENSITIVE_OPERATIONS = [
    "payment_methods:create",
    "payment_methods:delete",
    "payment_methods:set_default",
    "billing_address:update",
]
"""The default sensitive operations, by scope: adding, deleting or choosing a payment
method and changing the billing address (the demo catalog's scopes)."""


class AnomalyRuleSettings(Section):
    """One anomaly rule: what it counts, when it fires, and what happens then."""

    disabled: bool = Field(
        False,
        description=(
            "Remove this rule, default included: `card_testing = { disabled = true }`"
            " (`DRAGOMAN_ANOMALY__RULES__CARD_TESTING__DISABLED=true`) drops the default"
            " card_testing rule."
        ),
    )

    report_only: bool = Field(
        False,
        description=(
            "Report only: when this rule fires, a block or step-up action is not applied (no"
            " block is stored); the request's audit record gains a `would_deny` entry and"
            " the alert says `report_only`."
        ),
    )
    kind: AnomalyKind = Field(
        "threshold",
        description=(
            "`threshold`: fires when the account's changes in the sliding window exceed"
            " `threshold` (at threshold + 1, never at threshold). `baseline`: fires when"
            " they reach `min_count` and exceed `factor` times the EWMA of the account's own"
            " per-window counts (an account without a completed window has no baseline"
            " yet). `card_testing`: fires when `pairs` add/delete pairs (an add"
            " then a delete within `pair_within`) fall in the window."
        ),
    )
    operations: list[str] = Field(
        default_factory=lambda: list(SENSITIVE_OPERATIONS),
        min_length=1,
        description=(
            "The operations it counts (threshold, baseline): operation ids, scopes,"
            " `resource:*`, `tier:<tier>` or `*`, as in policy.roles."
        ),
    )
    window: Duration = Field(
        3600.0, ge=1, le=30 * 86400, description="Length of the sliding window."
    )
    threshold: int = Field(
        20, ge=1, description="threshold: most changes allowed in the window without firing."
    )
    factor: float = Field(
        5.0, gt=1, le=1000, description="baseline: how many times its EWMA a window may reach."
    )
    min_count: int = Field(
        10,
        ge=1,
        description=(
            "baseline: fewest changes in the window that may fire (a new account's first"
            " few changes never do)."
        ),
    )
    smoothing: float = Field(
        0.3,
        gt=0,
        le=1,
        description="baseline: EWMA weight of the newest completed window (0 < alpha <= 1).",
    )
    adds: list[str] = Field(
        default_factory=lambda: ["payment_methods:create"],
        min_length=1,
        description="card_testing: the operations that add a payment method.",
    )
    deletes: list[str] = Field(
        default_factory=lambda: ["payment_methods:delete"],
        min_length=1,
        description="card_testing: the operations that delete one.",
    )
    pair_within: Duration = Field(
        300.0, gt=0, le=86400, description="card_testing: a delete this soon after an add pairs."
    )
    pairs: int = Field(3, ge=1, description="card_testing: pairs in the window that fire.")
    action: AnomalyAction = Field(
        "alert",
        description=(
            "What firing does (an alert is always sent): `alert` lets the request go on;"
            " `step_up` refuses it with 401 insufficient_user_authentication unless the"
            " caller signed in within `step_up_max_age`; `block` refuses it with 403"
            " anomaly_blocked and blocks the account's sensitive operations for `block_for`."
        ),
    )
    block_for: Duration = Field(
        900.0, gt=0, le=30 * 86400, description="block: how long the account stays blocked."
    )
    step_up_max_age: Duration = Field(
        300.0, gt=0, le=86400, description="step_up: how recent the caller's sign-in must be."
    )

    @model_validator(mode="after")
    def _pairs_fit_window(self) -> AnomalyRuleSettings:
        if self.kind == "card_testing" and self.pair_within > self.window:
            raise ValueError("pair_within must not exceed window")
        return self


_DEFAULT_RULES: dict[str, dict[str, Any]] = {
    "changes_burst": {"kind": "threshold"},
    "changes_above_baseline": {"kind": "baseline"},
    "card_testing": {"kind": "card_testing", "action": "block"},
}
"""The default rules, as the keys that differ from a rule's own defaults."""


def _default_anomaly_rules() -> dict[str, AnomalyRuleSettings]:
    return {name: AnomalyRuleSettings(**rule) for name, rule in _DEFAULT_RULES.items()}


class AnomalySettings(Section):
    """Anomaly detection on sensitive operations, per verified cloud account
    (docs/anomaly.md)."""

    enabled: bool = Field(True, description="Count sensitive operations and apply the rules.")
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description=(
            "Where the counts and blocks live: `memory` (one process) or `redis` (shared by"
            " every instance; while Redis is down sensitive operations are refused with 503"
            " anomaly_unavailable)."
        ),
    )
    redis_url: str | None = Field(
        None, description="redis:// or rediss:// URL of the redis backend."
    )
    rules: dict[str, AnomalyRuleSettings] = Field(
        default_factory=_default_anomaly_rules,
        description=(
            "Rule name -> rule. Default: changes_burst (threshold 20 per 1h, alert),"
            " changes_above_baseline (5x the EWMA, at least 10 per 1h, alert), card_testing"
            " (3 add/delete pairs within 5m each in 1h: block for 15m). The rules named here"
            " are added to the defaults; a default rule named here takes the keys given and"
            ' keeps its other ones, `kind` included (`card_testing = { action = "alert" }`'
            " keeps the card_testing rule, alerting only). To remove a default rule, write"
            " `card_testing = { disabled = true }`."
        ),
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @field_validator("rules", mode="before")
    @classmethod
    def _rules_over_defaults(cls, value: Any) -> Any:
        # Naming one rule (or one key of a default rule) must not drop the default rules
        # nor turn a default rule into another kind (that would fail open).
        if not isinstance(value, Mapping):
            return value
        merged: dict[str, Any] = {name: dict(rule) for name, rule in _DEFAULT_RULES.items()}
        for name, rule in value.items():
            if isinstance(rule, Mapping) and name in merged:
                merged[name] = {**merged[name], **rule}
            else:
                merged[name] = rule
        return merged

    @field_validator("rules")
    @classmethod
    def _rule_names(cls, value: dict[str, AnomalyRuleSettings]) -> dict[str, AnomalyRuleSettings]:
        for name in value:
            if not _RULE_NAME.match(name):
                raise ValueError(f"rule name {name!r}: lower-case letters, digits, _ and -")
        return {name: rule for name, rule in value.items() if not rule.disabled}

    def configured_rules(self) -> frozenset[str]:
        """The names of the rules the operator wrote: every rule but a default one left as
        it is (the defaults name the demo catalog's scopes, so another catalog may not
        have them; the operator's own rules must name something in it)."""
        return frozenset(
            name
            for name, rule in self.rules.items()
            if name not in _DEFAULT_RULES or rule != AnomalyRuleSettings(**_DEFAULT_RULES[name])
        )

    @model_validator(mode="after")
    def _backend_complete(self) -> AnomalySettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("the redis backend needs redis_url")
        return self
