"""When each listener's certificate expires, read at scrape time from the worker's
:class:`~dragoman.tls.ServerTls` (the certificate it serves now, reloads included).

A renewal that keeps failing (cert-manager, ACME, a secret nobody updates) shows here long
before the handshakes fail: alert on ``expiry - time() < 14 days`` (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from dragoman.tls import ServerTls

EXPIRY = "dragoman_tls_certificate_expiry_timestamp_seconds"


class TlsCollector:
    """``dragoman_tls_certificate_expiry_timestamp_seconds{listener}``: the notAfter of the
    certificate each TLS listener of this worker serves (``proxy``, ``decision``)."""

    def __init__(self, listeners: Sequence[ServerTls]) -> None:
        self._listeners = listeners

    def describe(self) -> Iterable[Metric]:
        return [self._expiry()]

    def collect(self) -> Iterable[Metric]:
        expiry = self._expiry()
        for tls in self._listeners:
            if tls.not_after is not None:
                expiry.add_metric([tls.listener], tls.not_after)
        return [expiry]

    @staticmethod
    def _expiry() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            EXPIRY,
            "When the listener's certificate expires (POSIX time; the one served now).",
            labels=["listener"],
        )
