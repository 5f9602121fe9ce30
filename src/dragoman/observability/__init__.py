"""Observability: Prometheus metrics (served on their own listener) and /readyz checks.

- :mod:`~dragoman.observability.metrics`: the metric families and the per-request meters.
- :mod:`~dragoman.observability.keys`: the signing key's age and readiness, at scrape time.
- :mod:`~dragoman.observability.endpoint`: GET /metrics on ``[metrics]`` host and port.
- :mod:`~dragoman.observability.readiness`: the named dependency checks of /readyz.

Every metric is described in docs/metrics.md.
"""

from dragoman.observability.endpoint import MULTIPROC_ENV, MetricsListener, exposition
from dragoman.observability.metrics import ProxyMetrics, RequestMeter, shared_metrics
from dragoman.observability.readiness import Check, Readiness, ping_probe, sync_probe

__all__ = [
    "MULTIPROC_ENV",
    "Check",
    "MetricsListener",
    "ProxyMetrics",
    "Readiness",
    "RequestMeter",
    "exposition",
    "ping_probe",
    "shared_metrics",
    "sync_probe",
]
