"""Runs wrk and parses its report (wrk 4.1 with ``--latency`` and ``mix.lua``).

wrk counts a response as an error ("Non-2xx or 3xx responses") when its status is 400 or
more, and reports connect/read/write/timeout "Socket errors"; either makes a run unusable.
``mix.lua`` adds one ``BENCH {...}`` line with the percentiles p50 ... p99.9 in
microseconds (wrk's own ``--latency`` block stops at p99).

wrk's own CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)`` around the run:
wrk is the only child reaped meanwhile) is kept with the result: ``wrk_cpu`` is the share
of one core it used over the run. wrk with ``-t1`` near 1.00 would be the bottleneck.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WRK = "wrk"
MIX_SCRIPT = Path(__file__).resolve().parent / "mix.lua"
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_BENCH = re.compile(r"^BENCH (\{.*\})\s*$", re.MULTILINE)


class WrkError(Exception):
    """wrk did not run, or printed something this parser does not understand."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How to load one URL."""

    url: str
    threads: int
    connections: int
    duration_s: float
    headers: tuple[str, ...] = ()
    script: Path | None = None
    script_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_s: float
    requests: int
    latency_ms: dict[str, float]
    """Percentile ("50", "75", "90", "99", and "99.9" with mix.lua) -> milliseconds."""
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    """Only the non-zero counters: connect, read, write, timeout."""
    wrk_cpu: float | None = None
    """wrk's CPU time over the wall time of the run (1.0 = one core busy)."""

    @property
    def clean(self) -> bool:
        return self.non_2xx_3xx == 0 and not self.socket_errors and self.requests > 0

    def problems(self) -> list[str]:
        found = []
        if self.requests == 0:
            found.append("no request completed")
        if self.non_2xx_3xx:
            found.append(f"{self.non_2xx_3xx} of {self.requests} responses were not 2xx/3xx")
        if self.socket_errors:
            errors = ", ".join(f"{k} {v}" for k, v in self.socket_errors.items())
            found.append(f"socket errors: {errors}")
        return found

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def command(spec: LoadSpec) -> list[str]:
    argv = [
        WRK,
        f"-t{spec.threads}",
        f"-c{spec.connections}",
        f"-d{max(1, round(spec.duration_s))}s",
        "--latency",
    ]
    for header in spec.headers:
        argv += ["-H", header]
    if spec.script is not None:
        argv += ["-s", str(spec.script)]
    argv.append(spec.url)
    if spec.script_args:
        argv += ["--", *spec.script_args]
    return argv


def run(spec: LoadSpec) -> tuple[WrkResult, str]:
    """Run wrk once; the parsed result and wrk's own output."""
    argv = command(spec)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=spec.duration_s + 60, check=False
        )
    except FileNotFoundError:
        raise WrkError("wrk is not installed (Debian: apt-get install wrk)") from None
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish: {' '.join(argv[:6])} ...") from None
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}:\n{output}")
    result = parse(output)
    return WrkResult(**{**asdict(result), "wrk_cpu": cpu / wall if wall > 0 else None}), output


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse(text: str) -> WrkResult:
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    percentiles = {p: _ms(v, u) for p, v, u in _PERCENTILE.findall(text)}
    if rps is None or total is None or set(percentiles) != {"50", "75", "90", "99"}:
        raise WrkError(f"cannot read wrk's report:\n{text}")
    bench = _BENCH.search(text)
    if bench is not None:
        extra = json.loads(bench.group(1))
        percentiles |= {
            "50": extra["p50"] / 1000,
            "75": extra["p75"] / 1000,
            "90": extra["p90"] / 1000,
            "99": extra["p99"] / 1000,
            "99.9": extra["p999"] / 1000,
        }
    non_2xx = _NON_2XX.search(text)
    sockets = _SOCKET.search(text)
    socket_errors: dict[str, int] = {}
    if sockets is not None:
        names = ("connect", "read", "write", "timeout")
        socket_errors = {
            n: int(v) for n, v in zip(names, sockets.groups(), strict=True) if v != "0"
        }
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        requests=int(total.group(1)),
        latency_ms=percentiles,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )
