"""Anomaly alerts: what one firing rule tells the operator, and the Prometheus counter.

An alert names the rule, its kind and action, what was applied, the operation, the counts
and the window; the account only as ``account_ref`` (the keyed blind index of the verified
cloud account, the same key the counts live under) and the mapping's id, which dragoman
made. Never a token, a credential, a customer id, or anything from the request body, so
never card data.

The alerts go through :func:`dragoman.alerts.open_alert_sinks` (the log sink always, the
configured webhooks) plus :class:`PrometheusSink`, which counts
``dragoman_anomaly_alerts_total{rule,action}``.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from dragoman.alerts import Alert, AlertSink, FanOut, open_alert_sinks
from dragoman.anomaly.state import Hit
from dragoman.settings import AlertSettings

ALERT_KIND = "anomaly"
Applied = Literal["alert", "step_up", "step_up_satisfied", "block", "report_only"]
"""What the proxy did about the firing rule: let the request go on (``alert``), refused it
for a new sign-in (``step_up``), let it go on because the sign-in was recent enough
(``step_up_satisfied``), or refused it and blocked the account (``block``)."""

_COUNTERS: dict[int, Counter] = {}


def alerts_counter(registry: CollectorRegistry = REGISTRY) -> Counter:
    """The ``dragoman_anomaly_alerts_total`` counter of ``registry``, made once per
    registry (several proxies in one process share it)."""
    counter = _COUNTERS.get(id(registry))
    if counter is None:
        counter = Counter(
            "dragoman_anomaly_alerts",
            "Anomaly rules that fired, by rule and configured action.",
            ["rule", "action"],
            registry=registry,
        )
        _COUNTERS[id(registry)] = counter
    return counter


class PrometheusSink:
    """Counts anomaly alerts; other alerts pass by uncounted."""

    name = "prometheus"

    def __init__(self, counter: Counter) -> None:
        self._counter = counter

    def emit(self, alert: Alert) -> None:
        if alert.kind == ALERT_KIND:
            rule, action = alert.fields.get("rule"), alert.fields.get("action")
            self._counter.labels(rule=str(rule), action=str(action)).inc()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class Borrowed:
    """The proxy's own alert sinks, lent to the stage: it emits through them, the proxy
    starts and closes them (so each webhook has one queue, not one per user)."""

    name = "borrowed"

    def __init__(self, sink: AlertSink) -> None:
        self._sink = sink

    def emit(self, alert: Alert) -> None:
        self._sink.emit(alert)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def open_anomaly_sinks(
    settings: AlertSettings,
    registry: CollectorRegistry = REGISTRY,
    *,
    shared: AlertSink | None = None,
) -> FanOut:
    """The Prometheus counter and the alert sinks: ``shared`` (the proxy's, which it starts
    and closes) when given, else sinks of the stage's own from ``settings``."""
    own: AlertSink = open_alert_sinks(settings) if shared is None else Borrowed(shared)
    sinks: list[AlertSink] = [own, PrometheusSink(alerts_counter(registry))]
    return FanOut(sinks)


def anomaly_alert(
    hit: Hit, *, applied: Applied, account_ref: str, mapping_id: str | None, operation: str
) -> Alert:
    rule = hit.rule
    fields: dict[str, str | int | float | bool | None] = {
        "rule": rule.name,
        "kind": rule.kind,
        "action": rule.action,
        "applied": applied,
        "account_ref": account_ref,
        "mapping_id": mapping_id,
        "operation": operation,
        "count": hit.count,
        "window_seconds": rule.window_ms / 1000,
    }
    if rule.kind == "threshold":
        fields["threshold"] = rule.threshold
    elif rule.kind == "baseline":
        fields["baseline"] = round(hit.baseline or 0.0, 3)
        fields["factor"] = rule.factor
        fields["min_count"] = rule.min_count
    else:
        fields["pairs"] = rule.pairs
        fields["pair_within_seconds"] = rule.pair_within_ms / 1000
    noun = "add/delete pairs" if rule.kind == "card_testing" else "sensitive changes"
    return Alert(
        kind=ALERT_KIND,
        fields=fields,
        message=(
            f"anomaly rule {rule.name} fired: {hit.count} {noun} in"
            f" {rule.window_ms / 1000:g}s for one account ({applied})"
        ),
        severity="critical" if applied == "block" else "warning",
    )
