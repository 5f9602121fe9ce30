"""Anomaly detection on sensitive operations (issue 7 part 2; docs/anomaly.md).

Per verified cloud account, rules count the operations they name in a sliding window and
fire on an absolute threshold, on a jump above the account's own baseline (EWMA), or on
add/delete pairs (card testing); a firing rule alerts, asks for a step-up or blocks the
account's sensitive operations for a while. Counts live in memory or in Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from dragoman.alerts import AlertSink
from dragoman.anomaly.alerts import open_anomaly_sinks
from dragoman.anomaly.redis_state import RedisState
from dragoman.anomaly.rules import RuleBook
from dragoman.anomaly.stage import AnomalyStage, account_ref
from dragoman.anomaly.state import AnomalyState, MemoryState
from dragoman.catalog.model import Operation
from dragoman.settings import Settings

__all__ = ["AnomalyStage", "account_ref", "open_anomaly_stage"]


def open_anomaly_stage(
    settings: Settings,
    catalog: Sequence[Operation],
    *,
    alerts: AlertSink | None = None,
    account_key: Callable[[str], str] = account_ref,
    clock: Callable[[], float] = time.time,
) -> AnomalyStage:
    """The stage from settings; with ``anomaly.enabled`` off it has no rules (every
    operation passes untouched). ``alerts`` are the proxy's alert sinks, shared."""
    anomaly = settings.anomaly
    rules = RuleBook.from_settings(anomaly, catalog) if anomaly.enabled else RuleBook((), ())
    state: AnomalyState
    if anomaly.backend == "redis" and anomaly.enabled:
        assert anomaly.redis_url is not None  # checked by the settings
        state = RedisState.from_url(anomaly.redis_url)
    else:
        state = MemoryState(rules.rules)
    sinks = open_anomaly_sinks(settings.alerts, shared=alerts)
    return AnomalyStage(rules, state, sinks, account_key=account_key, clock=clock)
