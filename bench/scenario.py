"""What is measured: a workload sent to a target, checked once, warmed up, then loaded.

The workload is the caller mix (``mix.lua``): N callers, each with its own token and
mapping, round-robin, ``writes`` % POST. Around the measured wrk run the target's CPU time
is sampled from /proc (``procstat``), so each row also has the CPU time per request of
all the target's processes and their peak memory. The steady-arrival rows run
``arrivals.py`` in its own process instead of wrk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadgen
import procstat
from callers import read_callers_file
from stack import Target

HERE = Path(__file__).resolve().parent
LIST_PATH = "/v1/customers/{customer}/payment-methods"
CARD = b'{"card_number":"4242424242424242","exp_month":12,"exp_year":2030}'


@dataclass(frozen=True, slots=True)
class LoadSettings:
    threads: int
    connections: int
    warmup_s: float
    duration_s: float
    callers_file: Path
    writes: float
    """Percent of POST writes."""
    path: str = LIST_PATH


@dataclass
class Row:
    """One wrk measurement of one target."""

    target: Target
    workload: str
    result: loadgen.WrkResult | None = None
    cpu_us: float | None = None
    """CPU time of the target's processes per answered request, microseconds."""
    peak_mb: float | None = None
    problems: list[str] = field(default_factory=list)
    wrk_runs: int = 0

    @property
    def name(self) -> str:
        return f"{self.workload}: {self.target.label} x{self.target.workers}"

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.problems


@dataclass
class SteadyRow:
    """One open-loop (Poisson arrivals) measurement of one target."""

    target: Target
    rate: float
    data: dict[str, Any] = field(default_factory=dict)
    cpu_us: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.data) and not self.problems


def check_once(base: str, callers_file: Path, path: str = LIST_PATH) -> list[str]:
    """One GET (200) and one POST (201) as the first caller; what is wrong, if anything."""
    caller = read_callers_file(callers_file)[0]
    url = base + path.replace("{customer}", caller.customer)
    problems = []
    for method, body, expect in (("GET", None, 200), ("POST", CARD, 201)):
        headers = {"Authorization": f"Bearer {caller.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
            url, data=body, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        except OSError as exc:
            return [f"check request failed: {exc}"]
        if status != expect:
            shown = text[:600].decode("utf-8", errors="replace")
            problems.append(f"check: {method} {url} answered {status}, expected {expect}: {shown}")
    return problems


def _wrk(row: Row, settings: LoadSettings, seconds: float) -> loadgen.WrkResult:
    spec = loadgen.LoadSpec(
        url=row.target.url,
        threads=settings.threads,
        connections=settings.connections,
        duration_s=seconds,
        script=loadgen.MIX_SCRIPT,
        script_args=(str(settings.callers_file), f"{settings.writes:g}", settings.path),
    )
    row.wrk_runs += 1
    result, output = loadgen.run(spec)
    row.problems = result.problems()
    if row.problems:
        row.problems.append("wrk said:\n" + output.rstrip())
    return result


def measure(row: Row, settings: LoadSettings, *, check: bool = True) -> Row:
    """Check, warm up, measure (with the target's CPU time around the measured run)."""
    print(f"  {row.name:<58}", end="", flush=True)
    if check:
        row.problems = check_once(row.target.url, settings.callers_file, settings.path)
    if not row.problems and settings.warmup_s > 0:
        _wrk(row, settings, settings.warmup_s)
        if row.problems:
            row.problems.insert(0, "during the warm-up:")
    if not row.problems:
        pgids = row.target.pgids()
        before = procstat.cpu_seconds(pgids)
        row.result = _wrk(row, settings, settings.duration_s)
        spent = procstat.cpu_seconds(pgids) - before
        if row.result.requests:
            row.cpu_us = spent * 1e6 / row.result.requests
        row.peak_mb = procstat.peak_rss_mb(pgids)
    if row.ok and row.result is not None:
        r = row.result
        print(
            f"{r.requests_per_s:8.0f} req/s  p99 {r.latency_ms['99']:6.2f} ms"
            f"  {row.cpu_us or 0:5.0f} µs CPU/req",
            flush=True,
        )
    else:
        print("FAILED", flush=True)
        for problem in row.problems:
            print("\n".join("      " + line for line in problem.splitlines()), flush=True)
    return row


def steady(row: SteadyRow, settings: LoadSettings, duration_s: float, connections: int) -> None:
    """Poisson arrivals at ``row.rate`` for ``duration_s`` (``arrivals.py``, own process)."""
    label = f"steady {row.rate:g}/s: {row.target.label} x{row.target.workers}"
    print(f"  {label:<58}", end="", flush=True)
    argv = [
        sys.executable,
        str(HERE / "arrivals.py"),
        row.target.url,
        *("--callers", str(settings.callers_file), "--rate", f"{row.rate:g}"),
        *("--duration", f"{duration_s:g}", "--connections", str(connections)),
        *("--writes", f"{settings.writes:g}", "--path", settings.path),
    ]
    pgids = row.target.pgids()
    before = procstat.cpu_seconds(pgids)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    spent = procstat.cpu_seconds(pgids) - before
    if done.returncode != 0:
        row.problems = [f"arrivals.py exited {done.returncode}:\n{done.stderr[-2000:]}"]
        print("FAILED", flush=True)
        return
    row.data = json.loads(done.stdout)
    answered = int(row.data["answered"])
    if answered:
        row.cpu_us = spent * 1e6 / answered
    bad = {k: v for k, v in row.data["statuses"].items() if not k.startswith("2")}
    if bad or row.data["failures"] or answered < int(row.data["sent"]):
        row.problems = [
            f"statuses {row.data['statuses']}, failures {row.data['failures']},"
            f" {answered} of {row.data['sent']} answered"
        ]
    latency = row.data["latency_ms"]
    print(
        f"{row.data['achieved_rate']:8.0f} req/s  p99 {latency['99']:6.2f} ms"
        f"  p99.9 {latency['99.9']:6.2f} ms" + ("" if not row.problems else "  FAILED"),
        flush=True,
    )
    for problem in row.problems:
        print("      " + problem, flush=True)
