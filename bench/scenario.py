"""What is measured: a workload sent to a target, checked once, warmed up, then loaded.

The workload is the caller mix (``mix.lua``): N callers, each with its own token and
mapping, round-robin, ``writes`` % POST. Around the measured wrk run the target's CPU time
is sampled from /proc (``procstat``), so each row also has the CPU time per request of
all the target's processes and their peak memory. The steady-arrival rows run
``arrivals.py`` in its own process instead of wrk.

Each row starts with one checked GET and POST as the first caller. For dragoman's rows
(proxy mode and decision API alike) the token the upstream received for each of them is
read back from the upstream and verified with dragoman's ``TokenVerifier``, as the demo
platform verifies it: signature against the instance's JWKS, issuer, audience, scope of
the operation, the customer in the path, ``htm``/``htu`` for the upstream's origin.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import statistics
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadgen
import procstat
from callers import read_callers_file
from dragoman.demo.platform import OPERATIONS
from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER
from dragoman.tokens.verify import TokenRejected, TokenVerifier, bearer_of
from stack import Target, TokenCheck

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


def mix_load(args: Any, callers_file: Path) -> LoadSettings:
    """The load of the tools that compare targets in turns (``ab.py``, ``pairs.py``): one
    wrk thread, the options of ``stack.add_mix_arguments`` and their ``--warmup``."""
    return LoadSettings(
        threads=1,
        connections=args.connections,
        warmup_s=args.warmup,
        duration_s=args.seconds,
        callers_file=callers_file,
        writes=args.writes,
    )


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


def _scope_of(method: str, path: str) -> str | None:
    """The demo catalog's scope of ``method path`` (None: no such operation)."""
    for op in OPERATIONS:
        if op.method == method and re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", op.path), path):
            return op.scope
    return None


def verify_forwarded(
    check: TokenCheck, nonce: str, method: str, path: str, customer: str
) -> str | None:
    """What is wrong with the token the upstream got for the checked request, or None."""
    try:
        with urllib.request.urlopen(  # noqa: S310 (a loopback http URL)
            f"{check.upstream}/_bench/check/{nonce}", timeout=5
        ) as response:
            seen = json.load(response)
    except (OSError, ValueError) as exc:
        return f"check: the upstream has no record of the checked {method} ({exc})"
    if (seen["method"], seen["path"]) != (method, path):
        return f"check: the upstream got {seen['method']} {seen['path']}, not {method} {path}"
    scope = _scope_of(method, path)
    if scope is None:
        return f"check: {method} {path} is no operation of the demo catalog"

    async def verify() -> None:
        verifier = TokenVerifier(
            jwks_url=check.jwks_url, issuer=TOKEN_ISSUER, audience=AUDIENCE, origin=check.upstream
        )
        try:
            await verifier.verify(
                bearer_of(seen["authorization"]),
                method=method,
                path=path,
                scope=scope,
                customer=customer,
                once=False,
            )
        finally:
            await verifier.close()

    try:
        asyncio.run(verify())
    except TokenRejected as exc:
        return f"check: the token the upstream got for {method} {path} is refused: {exc.reason}"
    return None


def check_once(
    base: str, callers_file: Path, path: str = LIST_PATH, token_check: TokenCheck | None = None
) -> list[str]:
    """One GET (200) and one POST (201) as the first caller; what is wrong, if anything.

    ``token_check``: also verify the token the upstream received for each (``TokenCheck``).
    """
    caller = read_callers_file(callers_file)[0]
    target = path.replace("{customer}", caller.customer)
    url = base + target
    problems = []
    for method, body, expect in (("GET", None, 200), ("POST", CARD, 201)):
        headers = {"Authorization": f"Bearer {caller.token}"}
        nonce = secrets.token_hex(8)
        if token_check is not None:
            headers["X-Bench-Check"] = nonce
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
            url, data=body, headers=headers, method=method
        )
        problem_header = None
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
            problem_header = exc.headers.get("X-Dragoman-Problem")  # the decision API's
        except OSError as exc:
            return [f"check request failed: {exc}"]
        if status != expect:
            shown = (problem_header or text[:600].decode("utf-8", errors="replace"))[:600]
            problems.append(f"check: {method} {url} answered {status}, expected {expect}: {shown}")
        elif token_check is not None:
            wrong = verify_forwarded(token_check, nonce, method, target, caller.customer)
            if wrong is not None:
                problems.append(wrong)
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
    print(f"  {row.name:<58} ", end="", flush=True)
    if check:
        row.problems = check_once(
            row.target.url, settings.callers_file, settings.path, row.target.token_check
        )
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


@dataclass(frozen=True, slots=True)
class Pair:
    """One pair of :func:`alternated`: each side's req/s and CPU microseconds per request."""

    target_rate: float
    target_cpu_us: float
    reference_rate: float
    reference_cpu_us: float

    @property
    def ratio(self) -> float:
        """The target's req/s over the reference's."""
        return self.target_rate / self.reference_rate

    @property
    def cpu_ratio(self) -> float:
        """The target's CPU per request over the reference's."""
        return self.target_cpu_us / self.reference_cpu_us


@dataclass
class Paired:
    """A target measured in turns with a reference (:func:`alternated`)."""

    target: Target
    reference: Target
    pairs: list[Pair] = field(default_factory=list)
    target_wrk_runs: int = 0
    """wrk runs against the target (its audit file counts their cut-off requests)."""
    complete: bool = True
    """False when a measurement failed (its row printed why): the pairs stop there."""

    @property
    def ratios(self) -> list[float]:
        """The target's req/s over the reference's, one per pair."""
        return [pair.ratio for pair in self.pairs]

    @property
    def cpu_ratios(self) -> list[float]:
        """The target's CPU per request over the reference's, one per pair."""
        return [pair.cpu_ratio for pair in self.pairs]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_ratios)


def alternated(
    target: Target,
    reference: Target,
    settings: LoadSettings,
    pairs: int,
    *,
    check: bool = True,
    on_pair: Callable[[int, Pair], None] | None = None,
) -> Paired:
    """``pairs`` measurements of ``target`` and ``reference`` in turns, the order
    alternating from pair to pair (the reference first, then the target first), so that a
    machine that steadily slows down or speeds up weighs on both alike; rows measured a
    minute or more apart on a shared machine can differ by more than the effect sought.
    ``on_pair`` is told each pair as soon as it is measured. A failed measurement ends the
    pairs, the result marked incomplete."""
    paired = Paired(target, reference)
    for number in range(1, pairs + 1):
        order = (reference, target) if number % 2 else (target, reference)
        measured: dict[int, tuple[float, float]] = {}  # id of the target: req/s, CPU µs/req
        for one in order:
            row = measure(Row(one, f"pair {number}"), settings, check=check and number == 1)
            if one is target:
                paired.target_wrk_runs += row.wrk_runs
            if not row.ok or row.cpu_us is None or row.result is None:
                paired.complete = False
                return paired
            measured[id(one)] = (row.result.requests_per_s, row.cpu_us)
        pair = Pair(*measured[id(target)], *measured[id(reference)])
        paired.pairs.append(pair)
        if on_pair is not None:
            on_pair(number, pair)
    return paired


def steady(row: SteadyRow, settings: LoadSettings, duration_s: float, connections: int) -> None:
    """Poisson arrivals at ``row.rate`` for ``duration_s`` (``arrivals.py``, own process)."""
    label = f"steady {row.rate:g}/s: {row.target.label} x{row.target.workers}"
    print(f"  {label:<58} ", end="", flush=True)
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
