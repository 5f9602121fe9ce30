"""dragoman's benchmark: what the full pipeline costs next to a bare proxy on the same stack.

Method
------
Four servers start on loopback, each its own process group (``stack.py``, ``procs.py``):

- **upstream**: a plain aiohttp app on uvloop answering the demo catalog's routes with small
  fixed JSON bodies, no auth (``upstream.py``);
- **pass-through**: a proxy on dragoman's stack (aiohttp server + pooled aiohttp client on
  uvloop, ``reuse_port`` workers) that checks nothing (``passthrough.py``);
- **issuer**: the development OIDC issuer, for dragoman's JWKS discovery (``issuer.py``);
- **dragoman**: ``dragoman serve`` with the embedded defaults (SQLite, local key file with a
  generated master key, audit to a file), all in a temporary directory, its upstream the
  plain upstream, one mapping seeded with the CLI before start (acct-1001 -> cus_alice,
  ``role:billing_admin=*``). dragoman and the pass-through run the same number of workers.

Each operation (GET the list of payment methods; POST a payment method) goes to each target
(upstream direct, pass-through, dragoman) with one token for alice (billing_admin): first
one checked request (exact status, else the scenario fails with the answer's body), then a
wrk warm-up, then the measured wrk run (``scenario.py``, ``loadgen.py``). The table gives
req/s, latency p50/p99, and the ratios to upstream-direct and to pass-through for the same
operation (``report.py``); the JSON goes to bench/results/latest.json.

Caveats
-------
- wrk runs on the same machine (2 cores here) as every server: its CPU is taken from the
  proxies and the upstream, and so is that of anything else running. Absolute numbers are
  low and noisy; read the ratios between rows of one run, and compare runs on one machine.
- One token is replayed, so whatever dragoman caches per token or per account is warm:
  the steady state of one busy session, not a crowd of distinct callers.
- dragoman writes one audit record per request to a local file; a remote sink or a
  PostgreSQL store would change the picture.
- wrk counts only statuses >= 400 as errors, hence the checked request first. Any error or
  socket error fails the scenario loudly and the command exits non-zero. dragoman's audit
  file is summarised whenever a record is not "allow" (see ``report.audit_verdict``).

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

import loadgen
import report
from procs import ServiceError
from scenario import GET_LIST, POST_CREATE, LoadSettings, Scenario, run_scenario
from stack import Stack, fetch_token, plan_stack, running

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
TARGETS = (report.UPSTREAM, report.PASSTHROUGH, report.DRAGOMAN)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark dragoman against upstream-direct and a bare pass-through proxy."
    )
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per measured run.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds of warm-up per run.")
    parser.add_argument("--quick", action="store_true", help="3 s runs after 1 s warm-ups.")
    parser.add_argument("--threads", "-t", type=int, default=1, help="wrk threads.")
    parser.add_argument("--connections", "-c", type=int, default=64, help="wrk connections.")
    parser.add_argument(
        "--workers", type=int, default=1, help="Worker processes of dragoman and pass-through."
    )
    parser.add_argument("--no-write", action="store_true", help="Skip the POST scenarios.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary state dir.")
    parser.add_argument("--json", type=Path, default=RESULTS, help="Where to write results.")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    if args.workers < 1 or args.threads < 1 or args.connections < args.threads:
        parser.error("--workers and --threads must be >= 1, --connections >= --threads")
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be 1-120 s, --warmup 0-60 s")
    return args


def measure(stack: Stack, args: argparse.Namespace) -> list[Scenario]:
    settings = LoadSettings(
        threads=args.threads,
        connections=args.connections,
        warmup_s=args.warmup,
        duration_s=args.duration,
        token=fetch_token(stack.urls["issuer"]),
        scripts=stack.state,
    )
    base = {
        report.UPSTREAM: stack.urls["upstream"],
        report.PASSTHROUGH: stack.urls["passthrough"],
        report.DRAGOMAN: stack.urls["dragoman"],
    }
    operations = [GET_LIST] if args.no_write else [GET_LIST, POST_CREATE]
    scenarios = [Scenario(op, t, base[t] + op.path) for op in operations for t in TARGETS]
    print(
        f"\nwrk -t{args.threads} -c{args.connections}, per scenario: one checked request,"
        f" {args.warmup:g}s warm-up, {args.duration:g}s measured",
        flush=True,
    )
    for scenario in scenarios:
        run_scenario(scenario, settings)
        for service in stack.services:
            service.check_alive()
    return scenarios


def publish(stack: Stack, scenarios: list[Scenario], args: argparse.Namespace) -> bool:
    """Print the table (and the audit outcomes if needed), write the JSON; True if all ok."""
    env = report.environment(
        {
            "workers": args.workers,
            "wrk": {"threads": args.threads, "connections": args.connections},
            "duration_s": args.duration,
            "warmup_s": args.warmup,
        }
    )
    print(
        f"\ndragoman benchmark: {env['cpus']} CPUs (load average {env['load_average'][0]:.1f}),"
        f" {args.workers} worker(s) per proxy, wrk -t{args.threads} -c{args.connections}"
        f" -d{args.duration:g}s on the same machine"
    )
    print(report.table(scenarios))
    audit = report.summarise_audit(stack.audit_path)
    audit_ok = report.audit_verdict(audit, scenarios, args.connections)
    report.write_json(args.json, scenarios, env, audit)
    print(f"\nresults: {args.json}")
    failed = [s.name for s in scenarios if not s.ok]
    if failed:
        print(f"\n!!! BENCHMARK FAILED: {', '.join(failed)} (details above) !!!", file=sys.stderr)
    return not failed and audit_ok


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
    state = Path(tempfile.mkdtemp(prefix="dragoman-bench-"))
    started = time.monotonic()
    ok = interrupted = False
    try:
        print(f"starting servers (state in {state})", flush=True)
        stack = plan_stack(state, args.workers)
        with running(stack):
            scenarios = measure(stack, args)
        ok = publish(stack, scenarios, args)  # after the stop: the audit file is complete
    except (ServiceError, loadgen.WrkError, OSError) as exc:
        print(f"\n!!! BENCHMARK FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; every server was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep or not (ok or interrupted):
            print(f"state kept in {state} (logs, settings, audit.jsonl)", file=sys.stderr)
        else:
            shutil.rmtree(state, ignore_errors=True)
    print(f"took {time.monotonic() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
