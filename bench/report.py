"""The results: the printed tables, the goals, the audit summary, bench/results/latest.json."""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scenario import Paired, Row, SteadyRow
from stack import (
    DECISION_OF,
    DRAGOMAN_MEMORY,
    DRAGOMAN_PG_REDIS,
    DRAGOMAN_SQLITE_REDIS,
    NGINX,
    NGINX_AUTH,
    PASSTHROUGH,
    REFERENCES,
    UPSTREAM,
)

RATIO_HEADS = {
    UPSTREAM: "x upstream",
    NGINX: "x nginx",
    PASSTHROUGH: "x pass",
    NGINX_AUTH: "x auth_req",
}


def _find(rows: list[Row], label: str, workers: int) -> Row | None:
    for row in rows:
        if row.target.label == label and (label == UPSTREAM or row.target.workers == workers):
            return row
    return None


def ratio(rows: list[Row], row: Row, reference: str) -> float | None:
    """req/s of ``row`` over req/s of ``reference`` with the same worker count (the upstream
    has one process whatever the count)."""
    base = _find(rows, reference, row.target.workers)
    if base is None or not (row.ok and base.ok):
        return None
    assert row.result is not None and base.result is not None
    return row.result.requests_per_s / base.result.requests_per_s


def _fmt_table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: int) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = zip(row, widths, strict=True)
        return " | ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), "-+-".join("-" * w for w in widths), *map(line, rows)])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    header = (
        "target",
        "w",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU µs/req",
        "peak MB",
        "wrk CPU",
        *RATIO_HEADS.values(),
    )
    lines = []
    for row in rows:
        if row.ok and row.result is not None:
            r = row.result
            cells: tuple[str, ...] = (
                f"{r.requests_per_s:,.0f}",
                _ms(r.latency_ms["50"]),
                _ms(r.latency_ms["99"]),
                _ms(r.latency_ms.get("99.9")),
                "-" if row.cpu_us is None else f"{row.cpu_us:,.0f}",
                "-" if row.peak_mb is None else f"{row.peak_mb:,.0f}",
                "-" if r.wrk_cpu is None else f"{r.wrk_cpu:.0%}",
            )
        else:
            cells = ("FAILED", "-", "-", "-", "-", "-", "-")
        ratios = tuple(
            "1.00" if row.target.label == ref else _x(ratio(rows, row, ref)) for ref in RATIO_HEADS
        )
        lines.append((row.target.label, str(row.target.workers), *cells, *ratios))
    return _fmt_table(header, lines, left=1)


def steady_table(rows: list[SteadyRow]) -> str:
    header = (
        "target",
        "w",
        "rate",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "service p99",
        "lateness p99",
        "CPU µs/req",
    )
    lines = []
    for row in rows:
        if row.data:
            lat, svc, late = row.data["latency_ms"], row.data["service_ms"], row.data["lateness_ms"]
            cells: tuple[str, ...] = (
                f"{row.data['achieved_rate']:,.0f}/s" + ("" if row.ok else " FAILED"),
                *(_ms(lat[k]) for k in ("50", "90", "99", "99.9", "max")),
                _ms(svc["99"]),
                _ms(late["99"]),
                "-" if row.cpu_us is None else f"{row.cpu_us:,.0f}",
            )
        else:
            cells = ("FAILED", *("-" * 1 for _ in range(8)))
        lines.append((row.target.label, str(row.target.workers), *cells))
    return _fmt_table(header, lines, left=1)


UNSTEADY = 1.15
"""Two measurements of one reference further apart than this (req/s, the larger over the
smaller) make the ratios to it unreliable: the machine was disturbed during one of them."""


def _both(rows: list[Row], again: Row) -> tuple[Row, float, float] | None:
    """The first measurement of ``again``'s target and both req/s figures (None when
    either measurement failed)."""
    first = _find(rows, again.target.label, again.target.workers)
    if first is None or not (first.ok and again.ok):
        return None
    assert first.result is not None and again.result is not None
    return first, first.result.requests_per_s, again.result.requests_per_s


def _apart(a: float, b: float) -> bool:
    return max(a, b) / min(a, b) > UNSTEADY


def recheck_lines(rows: list[Row], rechecks: list[Row]) -> list[str]:
    """Each reference measured again at the end of the run, beside its first figure."""
    out = []
    for again in rechecks:
        both = _both(rows, again)
        if both is None:
            continue
        first, a, b = both
        steady = "UNSTEADY" if _apart(a, b) else "steady"
        out.append(
            f"{again.target.label} x{again.target.workers}: {a:,.0f} then {b:,.0f} req/s,"
            f" {first.cpu_us or 0:.0f} then {again.cpu_us or 0:.0f} µs/req ({steady})"
        )
    return out


def _unsteady(rows: list[Row], rechecks: list[Row], label: str, workers: int) -> bool:
    """Whether ``label`` with ``workers`` was measured twice with figures too far apart
    (or one of the two failed: nothing to trust a ratio to)."""
    for again in rechecks:
        if (again.target.label, again.target.workers) == (label, workers):
            both = _both(rows, again)
            return both is None or _apart(both[1], both[2])
    return False


def _verdict(met: bool, unsteady: bool) -> str:
    if unsteady:
        return "UNRELIABLE (the reference disagreed with its re-measurement: run again)"
    return "met" if met else "NOT met"


PASS_GOALS = {DRAGOMAN_MEMORY: 0.60, DRAGOMAN_SQLITE_REDIS: 0.45, DRAGOMAN_PG_REDIS: 0.45}
"""The issue's throughput goals against the pass-through (memory, and the Redis backends:
the PostgreSQL + Redis goal, which ``goals`` reports; SQLite + Redis has none of its own
and is held to it by ``pairs.py``)."""


def _count(paired: Paired, kind: str = "") -> str:
    n = len(paired.ratios)
    return f"1 {kind}pair" if n == 1 else f"{n} {kind}pairs"


def paired_goal(paired: Paired, goal: float) -> str:
    """The pairs' median against ``goal``, with the verdict."""
    verdict = _verdict(paired.median >= goal, unsteady=False)
    return f"{paired.median:.2f} as the median of {_count(paired, 'alternated ')}" + (
        f" (goal >= {goal}): {verdict}"
    )


def paired_lines(paired: list[Paired]) -> list[str]:
    """Each target measured in turns with its reference: the medians and their range."""
    return [
        f"{p.target.label} x{p.target.workers} / {p.reference.label} x{p.reference.workers}:"
        f" median {p.median:.2f} over {_count(p)} (from {min(p.ratios):.2f} to"
        f" {max(p.ratios):.2f}); CPU per request {p.cpu_median:.2f}x the reference's"
        for p in paired
        if p.complete
    ]


def _pass_goal(
    rows: list[Row], rechecks: list[Row], paired: list[Paired], row: Row, goal: float
) -> str | None:
    """A goal against the pass-through with the same worker count: from the alternated
    pairs' median when ``row``'s target was paired with it, else from the table (and
    unreliable when the pass-through's re-measurement disagreed)."""
    value = ratio(rows, row, PASSTHROUGH)
    name = f"{row.target.label} x{row.target.workers} / {PASSTHROUGH} x{row.target.workers}"
    pairs = next(
        (
            p
            for p in paired
            if p.complete and p.target is row.target and p.reference.label == PASSTHROUGH
        ),
        None,
    )
    if pairs is not None:
        table = "" if value is None else f"{value:.2f} in the table, "
        return f"{name} = {table}{paired_goal(pairs, goal)}"
    if value is None:
        return None
    unsteady = _unsteady(rows, rechecks, PASSTHROUGH, row.target.workers)
    return f"{name} = {value:.2f} (goal >= {goal}): {_verdict(value >= goal, unsteady)}"


def goals(
    rows: list[Row],
    steady_rows: list[SteadyRow],
    rechecks: list[Row] | None = None,
    paired: list[Paired] | None = None,
) -> list[str]:
    """The issue's goals against this run's figures (reported, never asserted). A ratio to
    the pass-through is read from the alternated pairs where there are some; a ratio to a
    reference whose re-measurement (``rechecks``) disagreed is reported unreliable."""
    rechecks, paired = rechecks or [], paired or []
    out = []
    memory = _find(rows, DRAGOMAN_MEMORY, 1)
    if memory is not None:
        line = _pass_goal(rows, rechecks, paired, memory, PASS_GOALS[DRAGOMAN_MEMORY])
        if line is not None:
            out.append(line)
        value = ratio(rows, memory, NGINX)
        if value is not None:
            verdict = _verdict(value >= 0.15, _unsteady(rows, rechecks, NGINX, 1))
            out.append(f"dragoman (memory) x1 / {NGINX} x1 = {value:.2f} (goal >= 0.15): {verdict}")
        if memory.cpu_us is not None:
            verdict = "met" if memory.cpu_us <= 150 else "NOT met"
            out.append(
                f"dragoman (memory) x1 CPU per request = {memory.cpu_us:.0f} µs"
                f" (goal <= 150): {verdict}"
            )
    for arrivals in steady_rows:
        if arrivals.target.label.startswith("dragoman") and arrivals.data:
            p99 = arrivals.data["latency_ms"]["99"]
            verdict = "met" if p99 <= 1.5 else "NOT met"
            out.append(
                f"{arrivals.target.label} x{arrivals.target.workers} at {arrivals.rate:g}/s"
                f" Poisson arrivals: p99 {p99:.2f} ms from the scheduled send (goal <= 1.5 ms):"
                f" {verdict}"
            )
    for row in rows:
        if row.target.label == DRAGOMAN_PG_REDIS:
            line = _pass_goal(rows, rechecks, paired, row, PASS_GOALS[DRAGOMAN_PG_REDIS])
            if line is not None:
                out.append(line)
    return out


def _proxy_row(rows: list[Row], row: Row) -> Row | None:
    """The proxy-mode row of a decision-API row (same settings, backends and workers)."""
    label = next((p for p, d in DECISION_OF.items() if d == row.target.label), None)
    return None if label is None else _find(rows, label, row.target.workers)


def decision_ratio(rows: list[Row], row: Row) -> float | None:
    """req/s of a decision-API row over its proxy-mode row's."""
    proxy = _proxy_row(rows, row)
    return None if proxy is None else ratio(rows, row, proxy.target.label)


def decision_lines(rows: list[Row]) -> list[str]:
    """Each decision-API row against its proxy-mode row."""
    out = []
    for row in rows:
        proxy, value = _proxy_row(rows, row), decision_ratio(rows, row)
        if proxy is None or value is None:
            continue
        cpu = ""
        if row.cpu_us is not None and proxy.cpu_us is not None:
            cpu = f"; CPU {row.cpu_us:.0f} (nginx + dragoman) vs {proxy.cpu_us:.0f} µs/req"
        out.append(f"{row.target.key} / {proxy.target.key} = {value:.2f} req/s{cpu}")
    return out


# -- dragoman's audit files ---------------------------------------------------------------------


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
                    counts["mapping {action} {outcome}".format(**record)] += 1
                    continue
                if "decision" not in record:  # checkpoints and other non-request records
                    counts[f"{record.get('event', '?')}"] += 1
                    continue
                counts["{event} {decision} code={code} status={status}".format(**record)] += 1
                if record["decision"] != "allow":
                    not_allowed += 1
                    if record["code"] not in seen_codes:  # one example per code
                        seen_codes.add(record["code"])
                        examples.append({k: record.get(k) for k in keep})
    return AuditSummary(sum(counts.values()), dict(counts.most_common()), not_allowed, examples)


def audit_verdict(name: str, audit: AuditSummary, wrk_runs: int, connections: int) -> bool:
    """Print the audit outcomes when any request was not allowed; False if that is a failure.

    wrk ends a run by closing its connections with requests still in flight; dragoman audits
    those as refused or failed although wrk never saw the answers. At most ``connections``
    such records per wrk run are expected; more means dragoman refused or failed requests.
    """
    if audit.not_allowed == 0:
        return True
    bound = connections * wrk_runs
    print(f"\n{name} audit: {audit.records} records, {audit.not_allowed} not 'allow':")
    for key, count in audit.by_outcome.items():
        print(f"  {count:>9}  {key}")
    for example in audit.examples:
        print(f"  e.g. {json.dumps(example)}")
    if audit.not_allowed <= bound:
        print(
            f"  (at most {connections} in-flight requests per wrk run x {wrk_runs} runs ="
            f" {bound} are cut off when wrk closes its connections: bench/README.md)"
        )
        return True
    print(f"!!! more than the {bound} records explained by wrk's cut-off: {name} failed !!!")
    return False


# -- the JSON file ------------------------------------------------------------------------------


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


def row_json(rows: list[Row], row: Row) -> dict[str, Any]:
    return {
        "target": row.target.label,
        "workers": row.target.workers,
        "workload": row.workload,
        "url": row.target.url,
        "ok": row.ok,
        "problems": row.problems,
        "wrk": row.result.to_json() if row.result else None,
        "cpu_us_per_request": row.cpu_us,
        "peak_rss_mb": row.peak_mb,
        "ratios": {ref: ratio(rows, row, ref) for ref in REFERENCES},
        "ratio_to_proxy_mode": decision_ratio(rows, row),
    }


def write_json(
    path: Path,
    rows: list[Row],
    steady_rows: list[SteadyRow],
    env: dict[str, Any],
    audits: dict[str, AuditSummary],
    goal_lines: list[str],
    rechecks: list[Row] | None = None,
    paired: list[Paired] | None = None,
) -> None:
    document = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": env,
        "results": [row_json(rows, row) for row in rows],
        "steady": [
            {
                "target": r.target.label,
                "workers": r.target.workers,
                "ok": r.ok,
                "problems": r.problems,
                "cpu_us_per_request": r.cpu_us,
                **r.data,
            }
            for r in steady_rows
        ],
        "rechecks": [row_json(rows, row) for row in rechecks or []],
        "pairs": [
            {
                "target": p.target.label,
                "reference": p.reference.label,
                "workers": p.target.workers,
                "req_s_ratios": p.ratios,
                "cpu_ratios": p.cpu_ratios,
                "median": p.median,
                "cpu_median": p.cpu_median,
            }
            for p in paired or []
            if p.complete
        ],
        "goals": goal_lines,
        "dragoman_audit": {name: a.to_json() for name, a in audits.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", "utf-8")
