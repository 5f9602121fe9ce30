"""How long reconciliation takes: one run over N mappings (100,000 by default).

Method
------
- The payment platform is the demo's (``dragoman.demo.platform``) in a process of its own
  (``--serve-platform``, on uvloop), seeded with N customers; every ``--every``-th one
  drifts (deleted, merged, re-owned or missing, in turn). It checks every token, as in
  the demo: signature against dragoman's JWKS, scope, customer, audience, request binding.
- In this process: dragoman's proxy application (it makes the signing key and serves the
  JWKS the platform verifies with) and the mapping store, on SQLite (a file, the embedded
  default) and on PostgreSQL when it is reachable (``DRAGOMAN_TEST_PG``, a fresh database
  dropped afterwards). N mappings are inserted in bulk, sealed as ``MappingStore.add``
  seals them.
- Timed: ``Reconciler.run()`` with the proxy's own platform client (a minted ES256 token
  and one HTTP request per mapping), batched checkpoints, findings and alerts to a counting
  sink. The run's summary is checked: every planted discrepancy found, nothing else.

Two cores are shared by the platform process, this process and the database. What a run
costs per mapping is one token minted and verified, one HTTP round trip, the unsealing of
the mapping (AES-GCM) and its share of a batched write.

Usage: ``.venv/bin/python bench/reconcile.py [--count 100000] [--concurrency 8 32]
[--every 100] [--no-postgres]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from dragoman.alerts.base import Alert
from dragoman.app import PROXY_KEY, build_app, proxy_runner
from dragoman.demo.platform import PaymentPlatform
from dragoman.demo.runner import AUDIENCE, TOKEN_ISSUER, demo_settings
from dragoman.keys.sealing import new_master_key
from dragoman.mapping.reconcile import Reconciler
from dragoman.mapping.schema import account_mappings
from dragoman.settings import load_settings
from dragoman.tokens.verify import TokenVerifier
from mapping_rows import sealed_row
from procs import Service, free_port

SCRIPT = Path(__file__).resolve()

KINDS = ("customer_deleted", "customer_merged", "account_mismatch", "customer_missing")
PG_ADMIN_URL = os.environ.get("DRAGOMAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def drift_of(i: int, every: int) -> str | None:
    if every <= 0 or i % every != every // 2:
        return None
    return KINDS[(i // every) % len(KINDS)]


# -- the platform process ------------------------------------------------------------------------


def serve_platform(port: int, jwks: str, count: int, every: int) -> None:
    from serving import serve_forever

    origin = f"http://127.0.0.1:{port}"
    platform = PaymentPlatform(
        TokenVerifier(jwks_url=jwks, issuer=TOKEN_ISSUER, audience=AUDIENCE, origin=origin)
    )
    for i in range(count):
        kind = drift_of(i, every)
        if kind == "customer_missing":
            continue
        customer = platform.add_customer(f"cus_{i:07d}", f"acct-{i:07d}")
        if kind == "customer_deleted":
            customer.deleted = True
        elif kind == "customer_merged":
            customer.merged_into = "cus_survivor"
        elif kind == "account_mismatch":
            customer.cloud_account = "acct-somebody-else"
    app = platform.app()

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/ready", ready)
    serve_forever(app, "127.0.0.1", port)


# -- this process ----------------------------------------------------------------------------------


class CountingSink:
    name = "counting"

    def __init__(self) -> None:
        self.alerts = 0

    def emit(self, alert: Alert) -> None:
        self.alerts += 1

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def seed(store: Any, count: int) -> float:
    started = time.perf_counter()
    now = datetime.now(UTC)
    for start in range(0, count, 5000):
        rows = []
        for i in range(start, min(count, start + 5000)):
            rows.append(
                sealed_row(store.codec, account=f"acct-{i:07d}", customer=f"cus_{i:07d}", now=now)
            )
        async with store.engine.begin() as conn:
            await conn.execute(account_mappings.insert(), rows)
    return time.perf_counter() - started


async def measure(
    name: str, database_url: str, state: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    proxy_port, platform_port = free_port(), free_port()
    master = state / "master.key"
    master.write_text(new_master_key() + "\n")
    master.chmod(0o600)
    data = demo_settings(
        proxy=f"http://127.0.0.1:{proxy_port}",
        platform=f"http://127.0.0.1:{platform_port}",
        issuer="http://127.0.0.1:9",
        console="http://127.0.0.1:9",
        state_dir=state,
    )
    data["store"]["database_url"] = database_url
    data["reconcile"] = {"schedule": False}
    settings = load_settings(overrides=data)
    app = build_app(settings)
    proxy = app[PROXY_KEY]
    runner = proxy_runner(app, settings)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", proxy_port).start()
    platform = Service(
        "platform",
        [
            sys.executable,
            str(SCRIPT),
            "--serve-platform",
            str(platform_port),
            "--jwks",
            f"http://127.0.0.1:{proxy_port}/.well-known/jwks.json",
            "--count",
            str(args.count),
            "--every",
            str(args.every),
        ],
        f"http://127.0.0.1:{platform_port}/ready",
        state / "platform.log",
    )
    platform.start()
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.get_running_loop().run_in_executor(None, platform.wait_ready, 60.0)
        seeded = await seed(proxy.store, args.count)
        print(f"{name}: {args.count} mappings inserted in {seeded:.1f} s", flush=True)
        expected = sum(1 for i in range(args.count) if drift_of(i, args.every))
        for concurrency in args.concurrency:
            sink = CountingSink()
            reconciler = Reconciler(
                proxy.store,
                proxy.platform,
                settings.reconcile,
                alerts=sink,
                concurrency=concurrency,
            )
            started = time.perf_counter()
            report = await reconciler.run()
            seconds = time.perf_counter() - started
            assert report is not None and report.completed, report
            assert report.counts["drifted"] == expected, report.counts
            assert report.counts["checked"] == args.count
            row = {
                "store": name,
                "mappings": args.count,
                "concurrency": concurrency,
                "seconds": round(seconds, 1),
                "per_second": round(args.count / seconds),
                "drift": report.counts["drifted"],
                "alerts": sink.alerts,
            }
            rows.append(row)
            print(
                f"{name}: concurrency {concurrency}: {seconds:.1f} s,"
                f" {args.count / seconds:.0f} mappings/s (drift {report.counts['drifted']},"
                f" new alerts {sink.alerts})",
                flush=True,
            )
    finally:
        platform.stop()
        await runner.cleanup()
    return rows


async def pg_database() -> str | None:
    import asyncpg

    name = f"dragoman_reconcile_bench_{uuid.uuid4().hex[:8]}"
    try:
        connection = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}): skipped")
        return None
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def drop_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def main(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dragoman-reconcile-bench-") as tmp:
        sqlite_state = Path(tmp) / "sqlite"
        sqlite_state.mkdir()
        rows += await measure(
            "sqlite", f"sqlite+aiosqlite:///{sqlite_state / 'dragoman.db'}", sqlite_state, args
        )
        if args.postgres:
            url = await pg_database()
            if url is not None:
                pg_state = Path(tmp) / "postgresql"
                pg_state.mkdir()
                try:
                    rows += await measure("postgresql", url, pg_state, args)
                finally:
                    await drop_database(url)
    print()
    print(f"{'store':<11} | {'mappings':>8} | {'conc.':>5} | {'seconds':>7} | {'mappings/s':>10}")
    for row in rows:
        print(
            f"{row['store']:<11} | {row['mappings']:>8} | {row['concurrency']:>5} |"
            f" {row['seconds']:>7} | {row['per_second']:>10}"
        )
    return 0


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="mappings (default 100000)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[8], help="lookups at once (default 8)"
    )
    parser.add_argument("--every", type=int, default=100, help="every n-th customer drifts")
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    parser.add_argument("--serve-platform", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jwks", default="", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.serve_platform is not None:
        serve_platform(arguments.serve_platform, arguments.jwks, arguments.count, arguments.every)
        sys.exit(0)
    sys.exit(uvloop.run(main(arguments)))
