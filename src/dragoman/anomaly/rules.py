"""Anomaly rules compiled from settings: which operations each one counts, and how.

A rule names operations the way ``policy.roles`` does (operation ids, scopes,
``resource:*``, ``tier:<tier>``, ``*``), so which operations are sensitive is catalog data,
not code. Compiling once at start turns each rule into a :class:`Rule` with its times in
integer milliseconds (what both backends count in, so they agree to the millisecond) and
answers, per operation, which rules it feeds and in which role.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from dragoman.catalog.model import Operation
from dragoman.policy.roles import entry_covers
from dragoman.settings import (
    RISK_TIERS,
    AnomalyAction,
    AnomalyKind,
    AnomalyRuleSettings,
    AnomalySettings,
    Problem,
    SettingsError,
)

log = logging.getLogger(__name__)

Role = Literal["count", "add", "delete"]
"""How an operation feeds a rule: counted (threshold, baseline), or one half of an
add/delete pair (card testing)."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: AnomalyKind
    action: AnomalyAction
    window_ms: int
    threshold: int
    """threshold: most changes in the window that do not fire."""
    factor: float
    min_count: int
    smoothing: float
    pairs: int
    pair_within_ms: int
    block_for_ms: int
    step_up_max_age: float
    counts: tuple[str, ...]
    adds: tuple[str, ...]
    deletes: tuple[str, ...]
    report_only: bool = False
    """Fires and alerts, but its action is only recorded (``would_deny``)."""

    @property
    def enforced_action(self) -> AnomalyAction:
        """The action the state applies: ``alert`` for a report-only rule (no block)."""
        return "alert" if self.report_only else self.action

    @classmethod
    def from_settings(cls, name: str, rule: AnomalyRuleSettings) -> Rule:
        return cls(
            name=name,
            kind=rule.kind,
            action=rule.action,
            window_ms=_ms(rule.window),
            threshold=rule.threshold,
            factor=rule.factor,
            min_count=rule.min_count,
            smoothing=rule.smoothing,
            pairs=rule.pairs,
            pair_within_ms=_ms(rule.pair_within),
            block_for_ms=_ms(rule.block_for),
            step_up_max_age=rule.step_up_max_age,
            counts=tuple(rule.operations),
            adds=tuple(rule.adds),
            report_only=rule.report_only,
            deletes=tuple(rule.deletes),
        )

    def role_of(self, operation: Operation) -> Role | None:
        """How ``operation`` feeds this rule, or None when it does not."""
        if self.kind == "card_testing":
            if any(entry_covers(e, operation) for e in self.adds):
                return "add"
            if any(entry_covers(e, operation) for e in self.deletes):
                return "delete"
            return None
        return "count" if any(entry_covers(e, operation) for e in self.counts) else None

    def entries(self) -> tuple[str, ...]:
        return self.adds + self.deletes if self.kind == "card_testing" else self.counts


@dataclass(frozen=True, slots=True)
class Feed:
    """One rule an operation feeds, and in which role."""

    rule: Rule
    role: Role


class RuleBook:
    """The compiled rules, and for each catalog operation the rules it feeds (computed once:
    no per-request matching)."""

    def __init__(self, rules: Sequence[Rule], catalog: Sequence[Operation]) -> None:
        self.rules = tuple(rules)
        self._feeds: dict[str, tuple[Feed, ...]] = {}
        for operation in catalog:
            feeds = []
            for rule in self.rules:
                role = rule.role_of(operation)
                if role is not None:
                    feeds.append(Feed(rule, role))
            if feeds:
                self._feeds[operation.id] = tuple(feeds)

    @classmethod
    def from_settings(cls, settings: AnomalySettings, catalog: Sequence[Operation]) -> RuleBook:
        """Refuses (SettingsError) the rules the operator wrote that name nothing in a
        non-empty catalog: a typo would silently switch detection off. The default rules
        (left as they are) name the demo catalog's scopes; with another catalog, the ones
        naming nothing are logged."""
        rules = [Rule.from_settings(name, rule) for name, rule in settings.rules.items()]
        unknown = _unknown_entries(rules, catalog) if catalog else {}
        configured = settings.configured_rules()
        refused = {name: what for name, what in unknown.items() if name in configured}
        if refused:
            raise SettingsError(
                [
                    Problem(f"anomaly.rules.{name}", f"names nothing in the catalog: {what}")
                    for name, what in refused.items()
                ]
            )
        for name, what in unknown.items():
            log.warning("default anomaly rule %s names nothing in the catalog: %s", name, what)
        return cls(rules, catalog)

    def feeds(self, operation: Operation) -> tuple[Feed, ...]:
        """The rules ``operation`` feeds; empty when it is not sensitive."""
        return self._feeds.get(operation.id, ())


def unknown_rule_entries(
    settings: AnomalySettings, catalog: Sequence[Operation]
) -> Mapping[str, str]:
    """Rule name -> the entries of explicitly configured rules that name nothing in a
    non-empty ``catalog`` (a typo would silently switch detection off). The settings refuse
    them at load, so `dragoman check-config` reports them as `serve` would."""
    if not catalog or not settings.enabled:
        return {}
    configured = settings.configured_rules()
    rules = [
        Rule.from_settings(name, rule)
        for name, rule in settings.rules.items()
        if name in configured
    ]
    return _unknown_entries(rules, catalog)


def _unknown_entries(rules: Sequence[Rule], catalog: Sequence[Operation]) -> Mapping[str, str]:
    known = {"*", *(f"tier:{tier}" for tier in RISK_TIERS)}
    for operation in catalog:
        known.update((operation.id, operation.scope, operation.scope.split(":", 1)[0] + ":*"))
    found = {}
    for rule in rules:
        missing = sorted(e for e in rule.entries() if e not in known)
        if missing:
            found[rule.name] = ", ".join(missing)
    return found
