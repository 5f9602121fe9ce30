"""How the mapping lookup scales: ``MappingStore.find_by_account`` latency (p50/p99) on tables
of 1,000, 100,000 and 1,000,000 sealed mappings, on SQLite and on PostgreSQL.

Method
------
- Each table is filled with real sealed rows: every row gets its own data key, wrapped by the
  KEK, its account and customer sealed under it and its two blind indexes, exactly as
  ``MappingStore.add`` writes them (``RowCodec.sealed_values``). The rows are made by worker
  processes (one per CPU) and inserted through the store's engine in transactions of
  20,000 rows.
- The cipher is derived from a fixed, public benchmark master key, so a built database can
  be reused: SQLite files are cached under ``bench/results/`` (gitignored) and PostgreSQL
  databases (``dragoman_bench_<size>``) are left on the server; both are reused when their
  row count is right. ``--rebuild`` builds them again, ``--drop-postgres`` removes the
  PostgreSQL ones and exits.
- The store is the real one with its lookup cache off (``cache_ttl=0``) and one
  connection: every lookup is one query, one blind index (HMAC), one unwrap and two field
  openings (AES-GCM), in sequence. After a warm-up, ``--lookups`` accounts drawn at random
  from the table (hits) and as many that were never linked (misses) are each timed with
  ``perf_counter_ns`` around ``await store.find_by_account(account)``.
- Timed lookups go in up to ten rounds, each visiting every table in turn, so that what
  else the machine does weighs on every size alike. The table gives p50/p99 in
  microseconds per size and kind; the last column is the p50 over the smallest table's
  p50: flat lookups stay near 1.0x.

Caveats: on loopback, one client, data in the OS page cache (the SQLite file of 1M rows is
~0.7 GB), whatever else runs on the machine (the load average is printed). Absolute numbers
are this machine's; the ratios between sizes are the point.

Usage: ``.venv/bin/python bench/mapping_lookup.py [--sizes 1000,100000,1000000]
[--lookups 2000] [--no-postgres] [--rebuild]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.rows import RowCodec
from dragoman.mapping.schema import account_mappings as t
from dragoman.mapping.store import MappingStore, make_engine
from dragoman.state import migrate
from mapping_rows import sealed_row

RESULTS = Path(__file__).resolve().parent / "results"
# Public on purpose: benchmark data only, so that a cached database can be opened again.
BENCH_MASTER_KEY = b"dragoman-bench-master-key-32byte"
PG_ADMIN = os.environ.get("DRAGOMAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CHUNK = 20_000
NOW = datetime(2031, 1, 1, tzinfo=UTC)


def account(i: int) -> str:
    return f"acct-bench-{i:07d}"


def customer(i: int) -> str:
    return f"cus_bench_{i:07d}"


# -- building ------------------------------------------------------------------------------------

_codec: RowCodec | None = None


def _init_worker() -> None:
    global _codec
    _codec = RowCodec(MappingCipher.from_master_key(BENCH_MASTER_KEY))


def _rows(span: tuple[int, int]) -> list[dict[str, Any]]:
    """Sealed rows ``start <= i < end`` (run in a worker process)."""
    assert _codec is not None
    return [
        sealed_row(_codec, account=account(i), customer=customer(i), now=NOW) for i in range(*span)
    ]


def _spans(size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, CHUNK):
        yield start, min(size, start + CHUNK)


async def count(store: MappingStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(t))).scalar_one())


async def fill(store: MappingStore, size: int, label: str) -> None:
    started = time.monotonic()
    done = 0
    context = multiprocessing.get_context("spawn")
    with context.Pool(os.cpu_count() or 1, initializer=_init_worker) as pool:
        loop = asyncio.get_running_loop()
        chunks = pool.imap(_rows, _spans(size))
        while True:
            rows = await loop.run_in_executor(None, next, chunks, None)
            if rows is None:
                break
            async with store.engine.begin() as conn:
                await conn.execute(t.insert(), rows)
            done += len(rows)
            rate = done / (time.monotonic() - started)
            print(f"\r  {label}: {done:,}/{size:,} rows ({rate:,.0f}/s)", end="", flush=True)
    print(f"\r  {label}: {size:,} rows built in {time.monotonic() - started:.0f}s" + " " * 20)


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Figures:
    database: str
    size: int
    kind: str
    lookups: int
    p50_us: float
    p99_us: float
    mean_us: float


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def time_lookups(
    store: MappingStore, accounts: list[str], *, expect_found: bool
) -> list[float]:
    samples = []
    for name in accounts:
        started = time.perf_counter_ns()
        found = await store.find_by_account(name)
        samples.append((time.perf_counter_ns() - started) / 1000)
        if (found is not None) != expect_found:
            raise AssertionError(f"lookup of {name}: expected found={expect_found}")
        if found is not None and found.cloud_account != name:
            raise AssertionError(f"lookup of {name} found {found.id}")
    return samples


@dataclass
class Table:
    database: str
    size: int
    store: MappingStore
    hits: list[float] = field(default_factory=list)
    misses: list[float] = field(default_factory=list)


async def prepare(database: str, url: str, size: int, rebuild: bool) -> Table:
    """The store over a table of ``size`` sealed mappings (built, or reused if it has them)."""
    cipher = MappingCipher.from_master_key(BENCH_MASTER_KEY)
    store = MappingStore(make_engine(url, pool_size=1), cipher=cipher, cache_ttl=0)
    await migrate.upgrade(store.engine)
    have = await count(store)
    if have != size or rebuild:
        if have:
            async with store.engine.begin() as conn:
                await conn.execute(t.delete())
        await fill(store, size, f"{database} {size:,}")
        if database == "postgresql":
            async with store.engine.connect() as conn:
                await conn.exec_driver_sql("ANALYZE account_mappings")
                await conn.commit()
    else:
        print(f"  {database} {size:,}: reusing the built table")
    return Table(database, size, store)


async def measure(tables: list[Table], lookups: int, rng: random.Random) -> list[Figures]:
    """Warm up each table, then time lookups in rounds that visit every table in turn, so
    that whatever else the machine does weighs on every size alike."""
    rounds = max(1, min(10, lookups // 100))
    for table in tables:
        warm = [account(rng.randrange(table.size)) for _ in range(min(lookups, 200))]
        await time_lookups(table.store, warm, expect_found=True)
        await time_lookups(table.store, [f"acct-warm-{i}" for i in warm], expect_found=False)
    for round_ in range(rounds):
        share = lookups // rounds + (1 if round_ < lookups % rounds else 0)
        for table in tables:
            hits = [account(rng.randrange(table.size)) for _ in range(share)]
            misses = [f"acct-missing-{rng.randrange(10**12):012d}" for _ in range(share)]
            table.hits += await time_lookups(table.store, hits, expect_found=True)
            table.misses += await time_lookups(table.store, misses, expect_found=False)
    return [
        Figures(
            table.database,
            table.size,
            kind,
            len(samples),
            percentile(samples, 0.50),
            percentile(samples, 0.99),
            statistics.fmean(samples),
        )
        for table in tables
        for kind, samples in (("hit", table.hits), ("miss", table.misses))
    ]


# -- PostgreSQL databases ------------------------------------------------------------------------


async def _admin(sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(PG_ADMIN, timeout=3)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def postgres_url(size: int) -> str | None:
    """The benchmark database of ``size`` rows (created if missing); None if unreachable."""
    import asyncpg

    name = f"dragoman_bench_{size}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"  postgresql: not reachable ({type(exc).__name__}); skipped")
        return None
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def drop_postgres(sizes: list[int]) -> None:
    for size in sizes:
        await _admin(f'DROP DATABASE IF EXISTS "dragoman_bench_{size}" WITH (FORCE)')
        print(f"dropped dragoman_bench_{size}")


# -- report --------------------------------------------------------------------------------------


def table(figures: list[Figures]) -> str:
    rows = [("database", "mappings", "lookup", "p50 µs", "p99 µs", "mean µs", "p50 vs smallest")]
    smallest: dict[tuple[str, str], float] = {}
    for f in figures:
        base = smallest.setdefault((f.database, f.kind), f.p50_us)
        rows.append(
            (
                f.database,
                f"{f.size:,}",
                f.kind,
                f"{f.p50_us:,.0f}",
                f"{f.p99_us:,.0f}",
                f"{f.mean_us:,.0f}",
                f"{f.p50_us / base:.2f}x",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        " | ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="find_by_account latency vs table size.")
    parser.add_argument("--sizes", default="1000,100000,1000000", help="Comma-separated sizes.")
    parser.add_argument("--lookups", type=int, default=2000, help="Timed lookups per kind.")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only.")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only.")
    parser.add_argument("--rebuild", action="store_true", help="Build the tables again.")
    parser.add_argument(
        "--drop-postgres", action="store_true", help="Drop the PostgreSQL databases and exit."
    )
    parser.add_argument("--seed", type=int, default=1, help="Random seed of the accounts.")
    parser.add_argument("--json", type=Path, default=RESULTS / "mapping_lookup.json")
    args = parser.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.lookups < 1 or not all(s >= 1 for s in args.sizes):
        parser.error("--lookups and --sizes must be positive")
    return args


async def run(args: argparse.Namespace) -> list[Figures]:
    if args.drop_postgres:
        await drop_postgres(args.sizes)
        return []
    RESULTS.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    figures: list[Figures] = []
    for database in ("sqlite", "postgresql"):
        if (database == "sqlite" and args.no_sqlite) or (
            database == "postgresql" and args.no_postgres
        ):
            continue
        print(f"{database}:", flush=True)
        tables: list[Table] = []
        try:
            for size in args.sizes:
                if database == "sqlite":
                    url = f"sqlite+aiosqlite:///{RESULTS / f'mappings-{size}.db'}"
                else:
                    found = await postgres_url(size)
                    if found is None:
                        break
                    url = found
                tables.append(await prepare(database, url, size, args.rebuild))
            if tables:
                figures += await measure(tables, args.lookups, rng)
        finally:
            for table in tables:
                await table.store.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    figures = asyncio.run(run(args))
    if not figures:
        return 0
    print(
        f"\nfind_by_account, cache off, one connection, {args.lookups} lookups per row in"
        f" rounds across sizes; {os.cpu_count()} CPUs, load average"
        f" {load_before:.1f} before, {os.getloadavg()[0]:.1f} after:\n"
    )
    print(table(figures))
    for size in args.sizes:
        path = RESULTS / f"mappings-{size}.db"
        if path.exists() and not args.no_sqlite:
            print(f"SQLite file of {size:,} mappings: {path.stat().st_size / 1e6:,.0f} MB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n", "utf-8")
    print(f"\nresults: {args.json}; took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
