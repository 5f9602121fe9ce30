"""The signing key's age and readiness, read from a proxy's key ring at scrape time.

Nothing is computed on the request path: the collector reads the ring's current view
(refreshed by the ring itself) when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from dragoman.keys.ring import KeyRing

AGE = "dragoman_signing_key_age_seconds"
READY = "dragoman_signing_key_ready"
SKEW = "dragoman_clock_skew_seconds"


class KeyRingCollector:
    """``dragoman_signing_key_age_seconds``: how long the current key has signed (absent
    while no key is current); ``dragoman_signing_key_ready``: 1 when the ring has a fresh
    view with a current key (what /readyz checks), else 0; ``dragoman_clock_skew_seconds``:
    how far this instance's clock is ahead of the key store's (absent where the store has
    no clock)."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring

    def describe(self) -> Iterable[Metric]:
        return [self._age(), self._ready(), self._skew()]

    def collect(self) -> Iterable[Metric]:
        ring = self._ring
        now = ring.now()
        current = ring.timeline.current(ring.keys, now)
        age = self._age()
        if current is not None:
            age.add_metric([], max(0.0, now - current.activates_at))
        ready = self._ready()
        ready.add_metric([], 1.0 if ring.ready() else 0.0)
        skew = self._skew()
        if ring.clock_skew is not None:
            skew.add_metric([], ring.clock_skew)
        return [age, ready, skew]

    @staticmethod
    def _age() -> GaugeMetricFamily:
        return GaugeMetricFamily(AGE, "Seconds since the current signing key began to sign.")

    @staticmethod
    def _skew() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            SKEW, "Seconds this instance's clock is ahead of the key store's (negative: behind)."
        )

    @staticmethod
    def _ready() -> GaugeMetricFamily:
        return GaugeMetricFamily(READY, "1 when a current signing key is known and fresh.")
