"""Reconciliation settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from dragoman.settings.base import Duration, Section

DriftAction = Literal["stale", "suspended"]
_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class ReconcileSettings(Section):
    """Reconciliation of the mappings with the payment platform's own records:
    `dragoman reconcile`, and the scheduled run in the proxy (one runner at a time across
    instances). See docs/reconcile.md."""

    schedule: bool = Field(
        True, description="Run reconciliation on a schedule inside the proxy (off: CLI only)."
    )
    interval: Duration = Field(
        86400.0,
        ge=1,
        le=30 * 86400,
        description=(
            "Time between two scheduled runs (keep it under mapping.stale_after). Without"
            " `at`, a run is due `interval` after the previous one started."
        ),
    )
    at: str | None = Field(
        None,
        description=(
            "Time of day (`HH:MM`, UTC) the scheduled runs are anchored at: runs are due at"
            " `at`, `at` + interval, ... A slot missed while no instance was up is run at"
            " the next start."
        ),
    )
    concurrency: int = Field(8, ge=1, le=256, description="Customer records asked for at once.")
    batch_size: int = Field(
        500,
        ge=1,
        le=10_000,
        description=(
            "Checked mappings written (and checkpointed) per transaction; an interrupted run"
            " re-checks at most this many (times the concurrency in flight)."
        ),
    )
    max_consecutive_errors: int = Field(
        25,
        ge=0,
        description=(
            "Stop the run (resumable) after this many lookups in a row failed: the"
            " platform is down. 0: never stop early."
        ),
    )
    resume_within: Duration = Field(
        12 * 3600.0,
        ge=0,
        le=7 * 86400,
        description=(
            "An unfinished run younger than this is continued; an older one is abandoned"
            " and a fresh run starts (mappings it checked long ago would be left stale)."
            " At most 7d."
        ),
    )
    lease_ttl: Duration = Field(
        60.0,
        ge=3,
        le=3600,
        description=(
            "SQLite: how long the runner lease lasts without renewal (renewed every third"
            " of it); a crashed runner's lease is taken over after it, or at once when the"
            " holder was a process on this host that is gone. PostgreSQL uses an advisory"
            " lock instead."
        ),
    )
    report_path: Path | None = Field(
        None, description="Write each run's JSON summary here (`--report` overrides it)."
    )
    on_customer_missing: DriftAction = Field(
        "suspended", description="Status given to a mapping whose customer does not exist."
    )
    on_customer_deleted: DriftAction = Field(
        "suspended", description="Status given to a mapping whose customer is deleted."
    )
    on_customer_merged: DriftAction = Field(
        "stale", description="Status given to a mapping whose customer was merged into another."
    )
    on_account_mismatch: DriftAction = Field(
        "suspended",
        description="Status given to a mapping whose customer names another (or no) account.",
    )

    @field_validator("at")
    @classmethod
    def _time_of_day(cls, value: str | None) -> str | None:
        if value is not None and not _TIME_OF_DAY.match(value):
            raise ValueError("a time of day is HH:MM (UTC), e.g. 03:30")
        return value
