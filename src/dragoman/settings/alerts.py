"""Alert sink settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from dragoman.settings.base import Duration, Section, check_http_url


class AlertSinkSettings(Section):
    type: Literal["webhook"] = Field(
        "webhook", description="Kind of sink (the log sink is always on, not listed here)."
    )
    url: str = Field(..., description="Where alerts are POSTed as JSON; https unless loopback.")
    timeout: Duration = Field(5.0, gt=0, le=60, description="Timeout of one delivery attempt.")
    retries: int = Field(
        5, ge=0, le=20, description="Further attempts after a failed one (then the alert is lost)."
    )
    backoff: Duration = Field(
        1.0, gt=0, le=600, description="Wait before the first retry; doubles each time (jittered)."
    )
    max_backoff: Duration = Field(
        60.0, gt=0, le=3600, description="Longest wait between attempts (Retry-After included)."
    )
    queue_size: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Alerts waiting for delivery; when full, new alerts are dropped and counted.",
    )
    secret: SecretStr | None = Field(
        None,
        description=(
            "Signs each body (X-Dragoman-Signature: t=..,v1=HMAC-SHA256 of `t.body`);"
            " prefer the environment."
        ),
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_http_url(value, require_tls=True)


class AlertSettings(Section):
    """Where alerts go (drift found by reconciliation). Every alert is logged (logger
    `dragoman.alerts`); the sinks listed here get it too."""

    sinks: list[AlertSinkSettings] = Field(
        default_factory=list, description="Further alert sinks (webhooks)."
    )
