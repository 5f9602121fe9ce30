"""The proxy's Prometheus metric families, and the hot-path helpers that feed them.

The families live in one registry per process (by default prometheus_client's REGISTRY,
which also holds ``dragoman_anomaly_alerts_total``): several proxies in one process (tests,
the demo) share them, as they share the anomaly counter. Every label is bounded by the
settings or the code: an operation id of the catalog, a denial code, an event of the audit
trail, a configured rule or issuer name. Never a principal, an account, a customer or a
path.

The per-request helpers bind label children once per label combination and keep them, so
a request costs one dict lookup and two increments, not a ``labels()`` call per metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from dragoman.anomaly.alerts import alerts_counter
from dragoman.audit.write_ahead import EVENT as FORWARD_EVENT
from dragoman.mapping.audit import EVENT as MAPPING_EVENT

DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
"""Seconds: 0.5 ms (a refusal before any I/O) to 5 s (a slow upstream)."""

HOUR = 3600.0
MAPPING_AGE_BUCKETS = tuple(h * HOUR for h in (1, 3, 6, 12, 18, 24, 27, 30, 33, 36, 48, 72, 168))
"""Seconds since a mapping was last validated: fine around one to two days, where the
default ``mapping.stale_after`` (36 h) sits (one missed daily reconciliation is 24-48 h)."""

NONE = "none"
"""The label value of a request that resolved no operation (or was refused before)."""
ALLOWED = "ok"
"""The ``code`` label of an allowed request (denials carry their stable code)."""

_Children = tuple[Counter, Histogram]

NOT_REQUESTS = frozenset({MAPPING_EVENT, FORWARD_EVENT})
"""Records that are not a request's own: mapping accesses, and a write's record before it
is forwarded (its request record follows)."""


class ProxyMetrics:
    """Every metric family of the proxy, registered once in ``registry``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "dragoman_requests",
            "Answered requests (one per request audit record), by event, catalog operation,"
            " decision and code.",
            ["event", "operation", "decision", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "dragoman_request_duration_seconds",
            "Time from receiving a request to writing its audit record.",
            ["event", "operation", "decision"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.jwks_refreshes = Counter(
            "dragoman_jwks_refresh",
            "Key set fetches of the OIDC issuers, by configured issuer name and outcome.",
            ["issuer", "outcome"],
            registry=registry,
        )
        self.mapping_age = Histogram(
            "dragoman_mapping_validation_age_seconds",
            "Age of a mapping's last_validated_at when a request used it.",
            buckets=MAPPING_AGE_BUCKETS,
            registry=registry,
        )
        self.rate_limits = Counter(
            "dragoman_rate_limit_decisions",
            "Rate-limit rule decisions, by configured rule and outcome"
            " (allowed, limited, unavailable).",
            ["rule", "outcome"],
            registry=registry,
        )
        self.audit_records = Counter(
            "dragoman_audit_records",
            "Audit records written, by sink.",
            ["sink"],
            registry=registry,
        )
        self.audit_failures = Counter(
            "dragoman_audit_write_failures",
            "Audit records the sink failed to write (the proxy refuses requests meanwhile).",
            ["sink"],
            registry=registry,
        )
        self.would_deny = Counter(
            "dragoman_would_deny",
            "Requests a report-only rule would have refused, by rule and code (the requests"
            " went on; docs/report-only.md).",
            ["rule", "code"],
            registry=registry,
        )
        # Sampled (dragoman.observability.in_flight); with several workers, the first sums
        # the live workers and the second is the busiest one's, as max_in_flight is per worker.
        self.in_flight = Gauge(
            "dragoman_requests_in_flight",
            "Proxied requests and decisions being handled, over every worker (sampled each"
            " second).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.in_flight_peak = Gauge(
            "dragoman_requests_in_flight_peak",
            "The most requests one worker handled at once during the last second (it refuses"
            " past server.max_in_flight).",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.anomaly_alerts = alerts_counter(registry)
        """``dragoman_anomaly_alerts_total{rule,action}`` (dragoman.anomaly.alerts)."""

    def request_meter(self, sink: str) -> RequestMeter:
        return RequestMeter(self, sink)

    def rate_limit_meter(self) -> LabelledCounter:
        return LabelledCounter(self.rate_limits)

    def jwks_meter(self) -> LabelledCounter:
        return LabelledCounter(self.jwks_refreshes)

    def observe_mapping_age(self) -> Callable[[float], None]:
        return self.mapping_age.observe


_SHARED: dict[int, ProxyMetrics] = {}


def shared_metrics() -> ProxyMetrics:
    """The families in prometheus_client's REGISTRY, made once per process."""
    metrics = _SHARED.get(id(REGISTRY))
    if metrics is None:
        metrics = _SHARED[id(REGISTRY)] = ProxyMetrics(REGISTRY)
    return metrics


class LabelledCounter:
    """Increments a two-label counter through children bound once per label pair."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, str], Counter] = {}

    def __call__(self, first: str, second: str) -> None:
        child = self._children.get((first, second))
        if child is None:
            child = self._children[(first, second)] = self._counter.labels(first, second)
        child.inc()


class RequestMeter:
    """Counts every record the audit trail writes, and each request's decision and time.

    It reads the record the trail writes, so what it counts is exactly what was audited: one
    request record per answered request (proxied, preflight, whoami, session, registration),
    refused ones included. Mapping access records are counted as records, not requests.
    """

    def __init__(self, metrics: ProxyMetrics, sink: str) -> None:
        self._metrics = metrics
        self._written = metrics.audit_records.labels(sink)
        self._failed = metrics.audit_failures.labels(sink)
        self._children: dict[tuple[object, object, object, object], _Children] = {}
        self._would_deny = LabelledCounter(metrics.would_deny)

    def written(self, ok: bool) -> None:
        (self._written if ok else self._failed).inc()

    def request(self, record: Mapping[str, object]) -> None:
        event = record.get("event")
        if event in NOT_REQUESTS:
            return
        key = (event, record.get("operation"), record.get("decision"), record.get("code"))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._bind(*key)
        counter, histogram = children
        counter.inc()
        latency = record.get("latency_ms")
        if isinstance(latency, int | float):
            histogram.observe(latency / 1000)
        reported = record.get("would_deny")
        if isinstance(reported, list):
            for entry in reported:
                self._would_deny(str(entry["rule"]), str(entry["code"]))

    def _bind(self, event: object, operation: object, decision: object, code: object) -> _Children:
        labels = (str(event or NONE), str(operation or NONE), str(decision or NONE))
        return (
            self._metrics.requests.labels(*labels, str(code or ALLOWED)),
            self._metrics.duration.labels(*labels),
        )
