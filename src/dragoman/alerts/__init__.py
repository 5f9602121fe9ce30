"""Alerts: what an operator must look at, and the sinks that carry it (log, webhook)."""

from __future__ import annotations

from dragoman.alerts.base import Alert, AlertObserver, AlertSink, FanOut, Outcome
from dragoman.alerts.log import LogSink
from dragoman.alerts.webhook import WebhookSink, WebhookStats
from dragoman.settings import AlertSettings

__all__ = [
    "Alert",
    "AlertObserver",
    "AlertSink",
    "FanOut",
    "LogSink",
    "Outcome",
    "WebhookSink",
    "WebhookStats",
    "open_alert_sinks",
]


def open_alert_sinks(settings: AlertSettings, *, observer: AlertObserver | None = None) -> FanOut:
    """The log sink, always, and every configured sink (call ``start`` on a running loop)."""
    sinks: list[AlertSink] = [LogSink(observer=observer)]
    for sink in settings.sinks:
        sinks.append(
            WebhookSink(
                sink.url,
                timeout=sink.timeout,
                retries=sink.retries,
                backoff=sink.backoff,
                max_backoff=sink.max_backoff,
                queue_size=sink.queue_size,
                secret=None if sink.secret is None else sink.secret.get_secret_value().encode(),
                observer=observer,
            )
        )
    return FanOut(sinks)
