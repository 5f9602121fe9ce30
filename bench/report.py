"""The results: the printed table, the audit summary, and bench/results/latest.json."""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scenario import Scenario

UPSTREAM, PASSTHROUGH, DRAGOMAN = "upstream direct", "pass-through", "dragoman"


def _find(scenarios: list[Scenario], like: Scenario, target: str) -> Scenario | None:
    return next(
        (s for s in scenarios if s.operation == like.operation and s.target == target), None
    )


def ratio(scenarios: list[Scenario], scenario: Scenario, target: str) -> float | None:
    """req/s of ``scenario`` over req/s of ``target`` for the same operation."""
    baseline = _find(scenarios, scenario, target)
    if not (scenario.ok and baseline is not None and baseline.ok):
        return None
    assert scenario.result is not None and baseline.result is not None
    return scenario.result.requests_per_s / baseline.result.requests_per_s


def table(scenarios: list[Scenario]) -> str:
    header = ("operation", "target", "req/s", "p50", "p99", "vs upstream", "vs pass-through")
    rows = [header]
    for s in scenarios:
        if s.ok and s.result is not None:
            r = s.result
            cells = (f"{r.requests_per_s:,.0f}", _ms(r.latency_ms["50"]), _ms(r.latency_ms["99"]))
        else:
            cells = ("FAILED", "-", "-")
        ratios = (_ratio(ratio(scenarios, s, UPSTREAM)), _ratio(ratio(scenarios, s, PASSTHROUGH)))
        rows.append((s.operation.label, s.target, *cells, *ratios))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = zip(row, widths, strict=True)
        return " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


# -- dragoman's audit file -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditSummary:
    records: int
    by_outcome: dict[str, int]
    """"event decision code=... status=..." -> count, most frequent first."""
    not_allowed: int
    examples: list[dict[str, Any]]
    """One record per code among those that were not "allow" (ids, path, reason, statuses)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "by_outcome": self.by_outcome,
            "not_allowed": self.not_allowed,
            "examples": self.examples,
        }


def summarise_audit(path: Path) -> AuditSummary:
    counts: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    not_allowed = 0
    seen_codes: set[str | None] = set()
    keep = ("audit_id", "method", "path", "code", "reason", "status", "upstream_status")
    if path.exists():
        with path.open("rb") as handle:
            for raw in handle:
                record = json.loads(raw)
                if record.get("event") == "mapping":
                    # A mapping read or write (the setup's `mappings add`), not a request.
                    counts["mapping {action} {outcome}".format(**record)] += 1
                    continue
                counts["{event} {decision} code={code} status={status}".format(**record)] += 1
                if record["decision"] != "allow":
                    not_allowed += 1
                    if record["code"] not in seen_codes:  # one example per code
                        seen_codes.add(record["code"])
                        examples.append({k: record.get(k) for k in keep})
    return AuditSummary(sum(counts.values()), dict(counts.most_common()), not_allowed, examples)


def audit_verdict(audit: AuditSummary, scenarios: list[Scenario], connections: int) -> bool:
    """Print the audit outcomes when any request was not allowed; False if that is a failure.

    wrk ends a run by closing its connections with requests still in flight; dragoman audits
    those as refused or failed although wrk never saw the answers. At most ``connections``
    such records per wrk run are expected; more means dragoman refused or failed requests
    that wrk counted (or would have) as answered.
    """
    if audit.not_allowed == 0:
        return True
    runs = sum(s.wrk_runs for s in scenarios if s.target == DRAGOMAN)
    bound = connections * runs
    print(f"\ndragoman audit: {audit.records} records, {audit.not_allowed} not 'allow':")
    for key, count in audit.by_outcome.items():
        print(f"  {count:>9}  {key}")
    for example in audit.examples:
        print(f"  e.g. {json.dumps(example)}")
    if audit.not_allowed <= bound:
        print(
            f"  (at most {connections} in-flight requests per wrk run x {runs} runs = {bound}"
            " are cut off when wrk closes its connections: these records are those; see"
            " bench/README.md, 'Audit records at the end of a run')"
        )
        return True
    print(f"!!! more than the {bound} records explained by wrk's cut-off: dragoman failed !!!")
    return False


# -- the JSON file ---------------------------------------------------------------------------


def environment(settings: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "dragoman": version("dragoman"),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        **settings,
    }


def write_json(
    path: Path, scenarios: list[Scenario], env: dict[str, Any], audit: AuditSummary
) -> None:
    results = [
        {
            "operation": s.operation.label,
            "target": s.target,
            "url": s.url,
            "ok": s.ok,
            "problems": s.problems,
            "wrk": s.result.to_json() if s.result else None,
            "ratio_vs_upstream": ratio(scenarios, s, UPSTREAM),
            "ratio_vs_passthrough": ratio(scenarios, s, PASSTHROUGH),
        }
        for s in scenarios
    ]
    document = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": env,
        "results": results,
        "dragoman_audit": audit.to_json(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", "utf-8")
