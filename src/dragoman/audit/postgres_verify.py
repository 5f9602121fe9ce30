"""Verifying the chain held in the ``audit_records`` table (``dragoman audit verify
--database``), with the same rules and the same verifier as the files.

The rows are read in seq order, a page at a time (the table may hold millions). Each row's
``line`` is what the verifier checks; its columns are checked against it too (``hash`` is
sha256(line), ``chain``, ``seq`` and ``prev`` are the line's): a row whose columns were
changed without its line is reported as edited, at its seq.

With files as well, one more check: the table's last row of the chain must be, byte for
byte, the file's record at that seq. Both chains being intact, that makes the whole table
a prefix of the files (the table lags while records wait to be shipped).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dragoman.audit.chain import digest
from dragoman.audit.postgres import make_ship_engine
from dragoman.audit.postgres_schema import audit_records
from dragoman.audit.verify import Problem, Report, _Line, _Verifier, end_problem

_T = audit_records
_PAGE = 2000


@dataclass(frozen=True, slots=True)
class ChainReport:
    chain: str
    report: Report
    last: tuple[int, str] | None
    """(seq, hash) of the chain's last row, for the comparison with files."""


def _where(chain: str, seq: int) -> str:
    return f"audit_records chain {chain} seq {seq}"


class _Rows:
    """The rows of one chain as verifier lines, page by page, checking each row's columns
    against its line."""

    def __init__(self, runner: asyncio.Runner, engine: AsyncEngine, chain: str) -> None:
        self._runner = runner
        self._engine = engine
        self.chain = chain
        self.mismatch: Problem | None = None
        self.last: tuple[int, str] | None = None

    async def _page(self, after: int | None) -> list[tuple[int, str, str, str]]:
        query = sa.select(_T.c.seq, _T.c.prev, _T.c.hash, _T.c.line).where(_T.c.chain == self.chain)
        if after is not None:
            query = query.where(_T.c.seq > after)
        async with self._engine.connect() as conn:
            result = await conn.execute(query.order_by(_T.c.seq).limit(_PAGE))
            return [(int(s), str(p), str(h), str(line)) for s, p, h, line in result]

    def __iter__(self) -> Iterator[_Line]:
        after: int | None = None
        while True:
            page = self._runner.run(self._page(after))
            for seq, prev, hash_, line in page:
                data = line.encode("utf-8")
                if not self._columns_match(int(seq), prev, hash_, data):
                    self.mismatch = Problem(
                        int(seq),
                        "edited",
                        "the row's columns do not match its line",
                        _where(self.chain, int(seq)),
                    )
                    return
                self.last = (int(seq), hash_)
                yield _Line(_where(self.chain, int(seq)), data, True)
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    def _columns_match(self, seq: int, prev: str, hash_: str, data: bytes) -> bool:
        try:
            record = json.loads(data)
        except ValueError:
            return True  # the verifier names what is wrong with the line itself
        if not isinstance(record, dict):
            return True
        return (
            digest(data) == hash_
            and record.get("chain") == self.chain
            and record.get("seq") == seq
            and record.get("prev") == prev
        )


def _verify_chain(
    runner: asyncio.Runner,
    engine: AsyncEngine,
    chain: str,
    *,
    keys: dict[str, ec.EllipticCurvePublicKey] | None,
    expect_at_least: int | None,
    closed: bool,
    partial: bool,
    requested: str | None,
) -> ChainReport:
    """``requested``: the chain asked for (--chain), None when ``chain`` is one the table
    holds (or the empty table's "")."""
    rows = _Rows(runner, engine, chain)
    verifier = _Verifier(keys, chain, partial)
    problem = (
        verifier.run(iter(rows))
        or rows.mismatch
        or end_problem(
            verifier,
            expect_at_least=expect_at_least,
            closed=closed,
            chain=requested,
            end=f"audit_records chain {chain}",
        )
    )
    report = Report(verifier.records, verifier.checkpoints, keys is not None, problem)
    return ChainReport(chain, report, rows.last)


async def _chains(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [str(c) for c in await conn.scalars(sa.select(_T.c.chain).distinct())]


def verify_table(
    url: str,
    *,
    keys: dict[str, ec.EllipticCurvePublicKey] | None = None,
    expect_at_least: int | None = None,
    closed: bool = False,
    chain: str | None = None,
    partial: bool = False,
) -> list[ChainReport]:
    """Verify each chain of the table (or only ``chain``); an empty table is one report of
    0 records (which ``expect_at_least`` and ``closed`` then catch), a chain it does not
    hold one that is broken (missing).

    A SQLite database is opened read-only: a path that names no file raises
    :class:`MissingDatabase` (it is not created). Raises sqlalchemy / OS errors when the
    database cannot be read."""
    with asyncio.Runner() as runner:
        engine = _read_only_engine(url)
        try:
            chains = [chain] if chain is not None else runner.run(_chains(engine))
            return [
                _verify_chain(
                    runner,
                    engine,
                    name,
                    keys=keys,
                    expect_at_least=expect_at_least,
                    closed=closed,
                    partial=partial,
                    requested=chain,
                )
                for name in sorted(chains) or [""]
            ]
        finally:
            runner.run(engine.dispose())


class MissingDatabase(FileNotFoundError):
    """A SQLite URL whose file does not exist (verification never creates one)."""


def _read_only_engine(url: str) -> AsyncEngine:
    """The engine that reads the table: SQLite through a read-only URI (``mode=ro``), so a
    mistyped path is an error and never a new, empty database; PostgreSQL as the shipper's
    (the verifier only SELECTs)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return make_ship_engine(url)
    database = parsed.database or ""
    if database.startswith("file:"):
        # Already a SQLite URI (SQLAlchemy reads `uri` as a boolean): only read-only.
        query = {"mode": "ro", "uri": "true"}
    elif database in ("", ":memory:"):
        return create_async_engine(url)  # nothing to create (and no pool to size)
    else:
        path = os.path.abspath(database)
        if not os.path.isfile(path):
            raise MissingDatabase(errno.ENOENT, "no SQLite database", path)
        parsed = parsed.set(database="file:" + quote(path))
        query = {"mode": "ro", "uri": "true"}
    return create_async_engine(parsed.update_query_dict(query), pool_size=1, max_overflow=0)


def disagreement(files: list[Path], table: ChainReport) -> str | None:
    """Why the files and the table's chain disagree (None: the table's last row is the
    files' record at that seq)."""
    if table.last is None:
        return None
    seq, expected = table.last
    last_seq: int | None = None
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                line = raw[:-1] if raw.endswith(b"\n") else raw
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or record.get("chain") != table.chain:
                    continue
                if record.get("seq") == seq:
                    if digest(line) == expected:
                        return None
                    return (
                        f"chain {table.chain} seq {seq}: the table's row is not the file's record"
                    )
                if isinstance(record.get("seq"), int):
                    last_seq = record["seq"]
    end = "no record" if last_seq is None else f"seq {last_seq} last"
    return f"chain {table.chain} seq {seq}: in the table but not in the files ({end})"
