"""The summary of a reconciliation run: printed by `dragoman reconcile`, logged by the
scheduled run, and written as JSON (``reconcile.report_path`` or ``--report``).

Counts are the run's, over all its sessions (a resumed run reports the whole run):
``checked`` (finished mappings), ``matched``, ``drifted`` and one count per drift kind,
``alerts`` (new discrepancies alerted), ``known`` (discrepancies an earlier run alerted,
unchanged), ``restored`` (stale -> active), ``conflicts`` (re-read after a concurrent
change), ``skipped`` (revoked meanwhile). ``errors`` are this session's: lookups that
failed and rows that did not open; those mappings are in ``remaining`` and a resumed run
checks them again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dragoman.mapping.platform import Drift
from dragoman.mapping.reconcile_records import RunRecord

DRIFT_KINDS = tuple(d.value for d in Drift if d is not Drift.NONE)
COUNT_KEYS = (
    "checked",
    "matched",
    "drifted",
    "alerts",
    "known",
    "restored",
    "conflicts",
    "skipped",
)


@dataclass(frozen=True, slots=True)
class Report:
    run_id: str
    status: str
    """completed, incomplete (mappings left unchecked: resume it), or interrupted."""
    trigger: str
    resumed: bool
    sessions: int
    started_at: datetime
    finished_at: datetime
    session_seconds: float
    active_seconds: float
    total: int
    remaining: int
    counts: dict[str, int]
    errors: int
    error_samples: list[dict[str, str]] = field(default_factory=list)
    note: str | None = None

    @classmethod
    def build(
        cls,
        *,
        run: RunRecord,
        status: str,
        trigger: str,
        resumed: bool,
        finished_at: datetime,
        session_seconds: float,
        active_seconds: float,
        remaining: int,
        counts: dict[str, int],
        errors: int,
        error_samples: list[dict[str, str]],
        note: str | None,
    ) -> Report:
        return cls(
            run_id=run.id,
            status=status,
            trigger=trigger,
            resumed=resumed,
            sessions=run.sessions + 1,
            started_at=run.started_at,
            finished_at=finished_at,
            session_seconds=session_seconds,
            active_seconds=active_seconds,
            total=run.total,
            remaining=remaining,
            counts={k: counts.get(k, 0) for k in (*COUNT_KEYS, *DRIFT_KINDS)},
            errors=errors,
            error_samples=list(error_samples),
            note=note,
        )

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def rate(self) -> float:
        """Mappings finished per second of work (all sessions)."""
        return self.counts["checked"] / self.active_seconds if self.active_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "trigger": self.trigger,
            "resumed": self.resumed,
            "sessions": self.sessions,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_seconds": round(self.active_seconds, 3),
            "session_seconds": round(self.session_seconds, 3),
            "mappings_per_second": round(self.rate, 1),
            "total": self.total,
            "remaining": self.remaining,
            "outcomes": {k: self.counts[k] for k in COUNT_KEYS},
            "drift": {k: self.counts[k] for k in DRIFT_KINDS},
            "errors": self.errors,
            "error_samples": self.error_samples,
            "note": self.note,
        }

    def lines(self) -> list[str]:
        c = self.counts
        drift = ", ".join(f"{k} {c[k]}" for k in DRIFT_KINDS if c[k]) or "none"
        resumed = f", resumed (session {self.sessions})" if self.resumed else ""
        out = [
            f"reconciliation run {self.run_id}: {self.status}{resumed}",
            f"  mappings in the run {self.total}, checked {c['checked']}, remaining"
            f" {self.remaining}; {self.active_seconds:.1f} s of work ({self.rate:.0f}/s)",
            f"  matched {c['matched']} (stale -> active {c['restored']}), drifted"
            f" {c['drifted']}: {drift}",
            f"  alerts {c['alerts']} (already known, not re-alerted: {c['known']}),"
            f" conflicts re-read {c['conflicts']}, revoked meanwhile {c['skipped']}",
            f"  errors this session {self.errors}",
        ]
        out.extend(f"    {e['mapping_id']}: {e['reason']}" for e in self.error_samples[:10])
        if self.note:
            out.append(f"  note: {self.note}")
        return out

    def write(self, path: Path) -> None:
        """The JSON report, replaced atomically (a reader never sees half of it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_json(), indent=2) + "\n", "utf-8")
        os.replace(partial, path)
