"""What is measured: an operation sent to a target, checked once, warmed up, then loaded."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import loadgen
from stack import CUSTOMER


@dataclass(frozen=True, slots=True)
class Operation:
    label: str
    method: str
    path: str
    expect: int
    """Exact status of a good answer (checked once before loading)."""
    body: bytes | None = None
    """A JSON body, sent with Content-Type: application/json."""

    def wrk_script(self, directory: Path) -> Path | None:
        """A wrk Lua script setting method and body (None for a plain GET).

        It sets ``wrk.*`` fields only, no per-request callbacks, so wrk keeps its fast path.
        """
        if self.method == "GET" and self.body is None:
            return None
        lines = [f"wrk.method = {json.dumps(self.method)}"]
        if self.body is not None:
            lines.append(f"wrk.body = {json.dumps(self.body.decode())}")
            lines.append('wrk.headers["Content-Type"] = "application/json"')
        path = directory / f"{self.label.replace(' ', '-').lower()}.lua"
        path.write_text("\n".join(lines) + "\n", "utf-8")
        return path


GET_LIST = Operation("GET list", "GET", f"/v1/customers/{CUSTOMER}/payment-methods", 200)
POST_CREATE = Operation(
    "POST create",
    "POST",
    f"/v1/customers/{CUSTOMER}/payment-methods",
    201,
    # The well-known Visa test number: nothing real is ever sent.
    body=b'{"card_number":"4242424242424242","exp_month":12,"exp_year":2030}',
)


@dataclass(frozen=True, slots=True)
class LoadSettings:
    threads: int
    connections: int
    warmup_s: float
    duration_s: float
    token: str
    scripts: Path
    """Directory for the generated wrk scripts."""


@dataclass
class Scenario:
    operation: Operation
    target: str
    url: str
    result: loadgen.WrkResult | None = None
    problems: list[str] = field(default_factory=list)
    wrk_runs: int = 0
    """How many wrk runs hit the target (warm-up included)."""

    @property
    def name(self) -> str:
        return f"{self.operation.label} -> {self.target}"

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.problems


def check_once(url: str, op: Operation, token: str) -> list[str]:
    """One request like the ones wrk will send; what is wrong with its answer, if anything."""
    headers = {"Authorization": f"Bearer {token}"}
    if op.body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        url, data=op.body, headers=headers, method=op.method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        return [f"check request failed: {exc}"]
    if status != op.expect:
        text = body[:600].decode("utf-8", errors="replace")
        return [f"check request: {op.method} {url} answered {status}, expected {op.expect}: {text}"]
    return []


def _load(scenario: Scenario, settings: LoadSettings, seconds: float) -> None:
    spec = loadgen.LoadSpec(
        url=scenario.url,
        threads=settings.threads,
        connections=settings.connections,
        duration_s=seconds,
        headers=(f"Authorization: Bearer {settings.token}",),
        script=scenario.operation.wrk_script(settings.scripts),
    )
    scenario.wrk_runs += 1
    result, output = loadgen.run(spec)
    scenario.result = result
    scenario.problems = result.problems()
    if scenario.problems:
        scenario.problems.append("wrk said:\n" + output.rstrip())


def run_scenario(scenario: Scenario, settings: LoadSettings) -> None:
    """Check, warm up, measure; print one progress line (or the problems, loudly)."""
    print(f"  {scenario.name:<34}", end="", flush=True)
    scenario.problems = check_once(scenario.url, scenario.operation, settings.token)
    if not scenario.problems and settings.warmup_s > 0:
        _load(scenario, settings, settings.warmup_s)
        if scenario.problems:
            scenario.problems.insert(0, "during the warm-up:")
    if not scenario.problems:
        _load(scenario, settings, settings.duration_s)
    if scenario.ok and scenario.result is not None:
        r = scenario.result
        print(f"{r.requests_per_s:9.0f} req/s  p50 {r.latency_ms['50']:7.2f} ms", flush=True)
    else:
        print("FAILED", flush=True)
        for problem in scenario.problems:
            print("\n".join("      " + line for line in problem.splitlines()), flush=True)
