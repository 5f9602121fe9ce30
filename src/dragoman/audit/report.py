"""``dragoman audit report``: what report-only rules would have refused, over a time range.

Reads audit files (the request and decision records; :mod:`dragoman.pipeline.report_only`)
and sums the ``would_deny`` entries per rule: how many requests it would have refused, with
which codes and reasons, on which operations (against every request of that operation in
the range), how many distinct principals and cloud accounts, first and last time seen.
Principals and accounts are counted, never listed: the report is for deciding whether to
enforce a rule, and may be shared more widely than the audit trail itself.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REQUEST_EVENTS = frozenset({"request", "decision"})


@dataclass
class RuleSummary:
    rule: str
    would_deny: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    """``code/reason`` -> requests."""
    operations: Counter[str] = field(default_factory=Counter)
    principals: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    first: str | None = None
    last: str | None = None

    def add(self, record: dict[str, Any], entry: dict[str, Any]) -> None:
        self.would_deny += 1
        self.codes[f"{entry.get('code')}/{entry.get('reason')}"] += 1
        self.operations[str(record.get("operation"))] += 1
        if record.get("principal") is not None:
            self.principals.add(str(record["principal"]))
        if record.get("cloud_account") is not None:
            self.accounts.add(str(record["cloud_account"]))
        when = str(record.get("time"))
        self.first = when if self.first is None or when < self.first else self.first
        self.last = when if self.last is None or when > self.last else self.last


@dataclass
class Report:
    since: datetime | None
    until: datetime | None
    requests: int = 0
    """Request and decision records in the range."""
    by_operation: Counter[str] = field(default_factory=Counter)
    rules: dict[str, RuleSummary] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "requests": self.requests,
            "rules": [
                {
                    "rule": s.rule,
                    "would_deny": s.would_deny,
                    "codes": dict(s.codes.most_common()),
                    "operations": {
                        op: {"would_deny": n, "requests": self.by_operation[op]}
                        for op, n in s.operations.most_common()
                    },
                    "principals": len(s.principals),
                    "cloud_accounts": len(s.accounts),
                    "first": s.first,
                    "last": s.last,
                }
                for s in sorted(self.rules.values(), key=lambda s: (-s.would_deny, s.rule))
            ],
        }

    def text(self) -> str:
        data = self.as_json()
        window = f"{data['since'] or 'the beginning'} to {data['until'] or 'now'}"
        lines = [f"{self.requests} requests from {window}"]
        if not data["rules"]:
            lines.append("no report-only rule would have refused any of them")
        for rule in data["rules"]:
            lines.append(
                f"{rule['rule']}: would deny {rule['would_deny']}"
                f" ({rule['principals']} principals, {rule['cloud_accounts']} accounts;"
                f" first {rule['first']}, last {rule['last']})"
            )
            for code, count in rule["codes"].items():
                lines.append(f"  {code}: {count}")
            for op, counts in rule["operations"].items():
                lines.append(f"  {op}: {counts['would_deny']} of {counts['requests']} requests")
        return "\n".join(lines)


def _records(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line; `audit verify` is the judge of those
                if isinstance(record, dict):
                    yield record


def _when(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record.get("time")))
    except ValueError:
        return None


def summarise(
    files: Iterable[Path], *, since: datetime | None = None, until: datetime | None = None
) -> Report:
    """The would-deny summary of the request records in ``files`` within [since, until)."""
    report = Report(since, until)
    for record in _records(files):
        if record.get("event") not in REQUEST_EVENTS:
            continue
        when = _when(record)
        if when is None:
            continue
        if (since is not None and when < since) or (until is not None and when >= until):
            continue
        report.requests += 1
        report.by_operation[str(record.get("operation"))] += 1
        for entry in record.get("would_deny") or ():
            if not isinstance(entry, dict):
                continue
            name = str(entry.get("rule"))
            summary = report.rules.get(name)
            if summary is None:
                summary = report.rules[name] = RuleSummary(name)
            summary.add(record, entry)
    return report
