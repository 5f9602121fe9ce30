"""Where the Prometheus metrics are served (docs/metrics.md)."""

from __future__ import annotations

from pydantic import Field

from dragoman.settings.base import Section


class MetricsSettings(Section):
    """The metrics endpoint: GET /metrics (Prometheus text format) on its own listener,
    never on the proxy's port, so the public side cannot read the proxy's counters. Every
    metric and what to alert on: docs/metrics.md."""

    enabled: bool = Field(True, description="Serve GET /metrics on `host`:`port`.")
    host: str = Field(
        "127.0.0.1",
        description=(
            "Address of the metrics listener; keep it on loopback or an internal interface"
            " (the metrics are not authenticated)."
        ),
    )
    port: int = Field(
        9464,
        ge=0,
        le=65535,
        description=(
            "TCP port of the metrics listener (0: any free port, with one worker only). Every"
            " worker shares it; any of them answers with the totals of all workers."
        ),
    )
