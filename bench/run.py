"""dragoman's benchmark: the full pipeline next to the proxies a team would otherwise run.

One command, loopback only, bounded in time (about 6 minutes by default, 100 s with
``--quick``): it prints one table and writes bench/results/latest.json. Everything is in
bench/README.md; in short:

Targets (each its own process group, ``stack.py``): the upstream directly; nginx as a
plain reverse proxy; nginx ``auth_request`` in front of a sidecar doing dragoman's checks
(``sidecar.py``); a pass-through proxy on dragoman's stack (``passthrough.py``); dragoman
with memory backends, with PostgreSQL + Redis, and with 2 workers (SQLite + Redis, and
PostgreSQL + Redis); and nginx ``auth_request`` asking dragoman's decision API, beside
the proxy-mode row with the same settings and backends (memory x1, SQLite + Redis x2;
PostgreSQL + Redis with ``--decision-postgres``). Each reference runs with the same worker
count as the dragoman rows it is compared with.

Workload: the caller mix (``mix.lua``): 1,000 callers, each its own token and mapping,
round-robin, 20 % POST writes; wrk ``-t1 -c64``. Per row: one checked GET and POST, a
warm-up, then the measured run, with the target's CPU time (all its processes, /proc)
around it. Then dragoman x1 and the pass-through x1 in alternated pairs (``--pairs``), which
the throughput goals are read from, and Poisson arrivals at 1,500 req/s (``arrivals.py``,
open loop, latency from the scheduled send) against the upstream, the pass-through and
dragoman.

Usage: ``make bench`` or ``.venv/bin/python bench/run.py [--quick] [--duration 8] ...``
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import callers as callers_mod
import loadgen
import nginx
import report
import stack as stack_mod
from procs import ServiceError
from scenario import LoadSettings, Paired, Row, SteadyRow, alternated, measure, steady
from stack import (
    DRAGOMAN_MEMORY,
    DRAGOMAN_PG_REDIS,
    DRAGOMAN_SQLITE_REDIS,
    NGINX,
    PASSTHROUGH,
    UPSTREAM,
    Stack,
    Target,
    running,
)

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark dragoman (proxy mode, and its decision API behind nginx"
        " auth_request) against the upstream, nginx, nginx auth_request with a sidecar and"
        " a pass-through proxy on the same stack."
    )
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per measured run.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds of warm-up per run.")
    parser.add_argument(
        "--quick", action="store_true", help="3 s runs after 1 s warm-ups, 4 s of arrivals."
    )
    parser.add_argument("--threads", "-t", type=int, default=1, help="wrk threads.")
    parser.add_argument("--connections", "-c", type=int, default=64, help="wrk connections.")
    parser.add_argument(
        "--workers",
        default="1,2",
        help="Worker counts to measure, comma-separated (default 1,2).",
    )
    parser.add_argument("--callers", type=int, default=1000, help="Distinct callers.")
    parser.add_argument("--writes", type=float, default=20.0, help="Percent of POST writes.")
    parser.add_argument("--no-write", action="store_true", help="Reads only (--writes 0).")
    parser.add_argument("--rate", type=float, default=1500.0, help="Poisson arrivals per second.")
    parser.add_argument(
        "--steady", type=float, default=10.0, help="Seconds of Poisson arrivals (0: skip)."
    )
    parser.add_argument("--no-postgres", action="store_true", help="Skip the PostgreSQL rows.")
    parser.add_argument(
        "--no-decision",
        action="store_true",
        help="Skip the nginx + dragoman decision API rows.",
    )
    parser.add_argument(
        "--decision-postgres",
        action="store_true",
        help="Also the decision API rows on PostgreSQL + Redis (one more row per worker count).",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="Alternated pairs of dragoman x1 and the pass-through x1 for the throughput"
        " goals (0: none; --quick: 1).",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the temporary state dir.")
    parser.add_argument("--json", type=Path, default=RESULTS, help="Where to write results.")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.steady = 3.0, 1.0, min(args.steady, 4.0)
        args.pairs = min(args.pairs, 1)
    if args.no_write:
        args.writes = 0.0
    try:
        args.workers = sorted({int(w) for w in str(args.workers).split(",")})
    except ValueError:
        parser.error("--workers takes counts like 1 or 1,2")
    if min(args.workers) < 1 or args.threads < 1 or args.connections < args.threads:
        parser.error("--workers and --threads must be >= 1, --connections >= --threads")
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 60 or not 0 <= args.steady <= 60:
        parser.error("--duration must be 1-120 s, --warmup 0-60 s, --steady 0-60 s")
    if not 0 <= args.pairs <= 20:
        parser.error("--pairs must be 0-20")
    if not 1 <= args.callers <= 100_000 or not 0 <= args.writes <= 100:
        parser.error("--callers must be 1-100000, --writes 0-100")
    return args


def build_targets(stack: Stack, urls: dict[str, str], args: argparse.Namespace) -> None:
    """References and dragoman instances for each worker count; stores seeded."""
    if nginx.find() is None:
        stack.notes.append("nginx is not installed: its rows are skipped (make nginx)")
    redis = stack_mod.redis_reachable()
    if not redis:
        stack.notes.append("Redis is not reachable on 127.0.0.1:6379: its rows are skipped")
    database = None if args.no_postgres or not redis else stack_mod.fresh_postgres_database()
    decision = not args.no_decision and nginx.find() is not None
    seeded_pg = False
    for workers in args.workers:
        stack_mod.add_references(stack, urls, workers, with_upstream=workers == args.workers[0])
        variants: list[tuple[str, str, str | None]] = []
        if workers == 1:
            variants.append((DRAGOMAN_MEMORY, "memory", None))
        elif redis:
            variants.append((DRAGOMAN_SQLITE_REDIS, "sqlite-redis", None))
        if database is not None:
            variants.append((DRAGOMAN_PG_REDIS, "pg-redis", database))
        for label, variant, url in variants:
            configs = [stack_mod.add_dragoman(stack, urls, label, workers, variant, url)]
            if decision and (url is None or args.decision_postgres):
                # The decision row right after its proxy-mode row: same settings, backends
                # (and PostgreSQL database), plus the decision listener behind nginx.
                configs.append(
                    stack_mod.add_dragoman(stack, urls, label, workers, variant, url, decision=True)
                )
            for config in configs:
                if url is None or not seeded_pg:
                    callers_mod.seed(config, args.callers)
                    seeded_pg = seeded_pg or url is not None


STEADY_TARGETS = {
    (1, UPSTREAM),
    (1, PASSTHROUGH),
    (1, DRAGOMAN_MEMORY),
    # A worker per core, as deployed: at the steady rate each is half as busy as one alone.
    (2, PASSTHROUGH),
    (2, DRAGOMAN_SQLITE_REDIS),
}
"""The steady-arrival rows: the references and dragoman, one worker and one per core."""


def _target(stack: Stack, label: str, workers: int) -> Target | None:
    return next((t for t in stack.targets if (t.label, t.workers) == (label, workers)), None)


def run_pairs(stack: Stack, args: argparse.Namespace, settings: LoadSettings) -> list[Paired]:
    """dragoman x1 (memory, and PostgreSQL + Redis) and the pass-through x1 in alternated
    pairs: the throughput goals' ratios, measured side by side rather than minutes apart."""
    passthrough = _target(stack, PASSTHROUGH, 1)
    found: list[Paired] = []
    if not args.pairs or passthrough is None:
        return found
    for label in (DRAGOMAN_MEMORY, DRAGOMAN_PG_REDIS):
        dragoman = _target(stack, label, 1)
        if dragoman is None:
            continue
        print(f"\n{label} x1 and {PASSTHROUGH} x1 in {args.pairs} alternated pairs", flush=True)
        found.append(alternated(dragoman, passthrough, settings, args.pairs, check=False))
    return found


def run_all(
    stack: Stack, args: argparse.Namespace
) -> tuple[list[Row], list[SteadyRow], list[Row], list[Paired]]:
    assert stack.callers_file is not None
    settings = LoadSettings(
        threads=args.threads,
        connections=args.connections,
        warmup_s=args.warmup,
        duration_s=args.duration,
        callers_file=stack.callers_file,
        writes=args.writes,
    )
    workload = f"{args.callers} callers, {args.writes:g}% writes"
    print(
        f"\n{workload}; wrk -t{args.threads} -c{args.connections} -s mix.lua; per row: one"
        f" checked GET and POST, {args.warmup:g}s warm-up, {args.duration:g}s measured",
        flush=True,
    )
    rows = []
    for target in stack.targets:
        rows.append(measure(Row(target, workload), settings))
        for service in [*stack.base, *stack.services]:
            service.check_alive()
    # The goals are ratios to the pass-through (both worker counts) and to nginx (one):
    # measured once more at the end, so a reference row that a disturbance slowed cannot
    # turn into a goal "met" unnoticed.
    rechecks = [
        measure(Row(target, workload), settings)
        for target in stack.targets
        if target.label == PASSTHROUGH or (target.label == NGINX and target.workers == 1)
    ]
    paired = run_pairs(stack, args, settings)
    steady_rows: list[SteadyRow] = []
    if args.steady > 0:
        print(f"\nPoisson arrivals at {args.rate:g}/s for {args.steady:g}s, 64 connections")
        for target in stack.targets:
            if (target.workers, target.label) in STEADY_TARGETS:
                row = SteadyRow(target, args.rate)
                steady(row, settings, args.steady, 64)
                steady_rows.append(row)
    return rows, steady_rows, rechecks, paired


def publish(
    stack: Stack,
    rows: list[Row],
    steady_rows: list[SteadyRow],
    rechecks: list[Row],
    paired: list[Paired],
    args: argparse.Namespace,
) -> bool:
    """Print the tables (and the audit outcomes if needed), write the JSON; True if all ok."""
    env = report.environment(
        {
            "workers": args.workers,
            "wrk": {"threads": args.threads, "connections": args.connections},
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "callers": args.callers,
            "writes_percent": args.writes,
            "steady": {"rate": args.rate, "duration_s": args.steady},
            "notes": stack.notes,
        }
    )
    print(
        f"\ndragoman benchmark: {env['cpus']} CPUs (load average {env['load_average'][0]:.1f}),"
        f" {args.callers} callers with {args.writes:g}% writes, wrk -t{args.threads}"
        f" -c{args.connections} -d{args.duration:g}s on the same machine;"
        " ratios are req/s over the reference's with the same worker count (w)\n"
    )
    print(report.table(rows))
    if steady_rows:
        print(
            f"\nsteady arrivals (Poisson, {args.rate:g}/s, {args.steady:g}s; latency from the"
            " scheduled send, service = from the write, lateness = generator delay + queueing):\n"
        )
        print(report.steady_table(steady_rows))
    decision_lines = report.decision_lines(rows)
    if decision_lines:
        print("\ndecision API (nginx auth_request) vs proxy mode, same settings and backends:")
        for line in decision_lines:
            print(f"  {line}")
    for note in stack.notes:
        print(f"note: {note}")
    for line in report.recheck_lines(rows, rechecks):
        print(f"reference re-measured: {line}")
    for line in report.paired_lines(paired):
        print(f"alternated pairs: {line}")
    goal_lines = report.goals(rows, steady_rows, rechecks, paired)
    if goal_lines:
        print("\ngoals (reported, not asserted):")
        for line in goal_lines:
            print(f"  {line}")
    audits_ok = True
    audits = {}
    for row in rows:
        if row.target.audit_path is not None:
            audit = report.summarise_audit(row.target.audit_path)
            audits[row.target.key] = audit
            # The pairs' runs against the same target are written to the same audit file.
            runs = row.wrk_runs + sum(p.target_wrk_runs for p in paired if p.target is row.target)
            audits_ok &= report.audit_verdict(row.target.key, audit, runs, args.connections)
    report.write_json(args.json, rows, steady_rows, env, audits, goal_lines, rechecks, paired)
    print(f"\nresults: {args.json}")
    failed = [r.name for r in rows if not r.ok] + [
        f"steady {r.target.key}" for r in steady_rows if not r.ok
    ]
    failed += [f"pairs {p.target.key}" for p in paired if not p.complete]
    if failed:
        print(f"\n!!! BENCHMARK FAILED: {', '.join(failed)} (details above) !!!", file=sys.stderr)
    return not failed and audits_ok


def _interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so every server is stopped on the way out.

    (SIGINT explicitly too: a shell starts background jobs with SIGINT ignored.)
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _interrupt_on_signals()
    if shutil.which(loadgen.WRK) is None:
        print("wrk is not installed (make wrk, or apt-get install wrk)", file=sys.stderr)
        return 1
    state = Path(tempfile.mkdtemp(prefix="dragoman-bench-"))
    started = time.monotonic()
    ok = interrupted = False
    try:
        print(f"starting servers (state in {state})", flush=True)
        stack, urls = stack_mod.plan_base(state)
        with running(stack.base):
            stack_mod.write_callers(stack, urls["issuer"], args.callers)
            build_targets(stack, urls, args)
            with running(stack.services):
                rows, steady_rows, rechecks, paired = run_all(stack, args)
        # After the stop: the audit files are complete.
        ok = publish(stack, rows, steady_rows, rechecks, paired, args)
    except (ServiceError, loadgen.WrkError, OSError) as exc:
        print(f"\n!!! BENCHMARK FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; every server was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep or not (ok or interrupted):
            print(f"state kept in {state} (logs, settings, audit files)", file=sys.stderr)
        else:
            shutil.rmtree(state, ignore_errors=True)
    print(f"took {time.monotonic() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
