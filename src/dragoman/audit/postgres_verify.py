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
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.audit.chain import digest
from dragoman.audit.checkpoint import EVENT as CHECKPOINT
from dragoman.audit.postgres import make_ship_engine
from dragoman.audit.postgres_schema import audit_records
from dragoman.audit.verify import Problem, Report, _Line, _Verifier

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
) -> ChainReport:
    rows = _Rows(runner, engine, chain)
    verifier = _Verifier(keys, chain, partial)
    problem = verifier.run(iter(rows)) or rows.mismatch
    total = verifier.index()
    end = f"audit_records chain {chain}"
    if problem is None and expect_at_least is not None and total < expect_at_least:
        detail = f"{total} records where at least {expect_at_least} were expected"
        problem = Problem(total, "truncated", detail, end)
    if problem is None and closed and verifier.records and verifier.last_event != CHECKPOINT:
        problem = Problem(total, "truncated", "the log does not end with a checkpoint", end)
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
    """Verify each chain of the table (or only ``chain``); an empty table, or a chain it
    does not hold, is one report of 0 records (which ``expect_at_least`` then catches).

    Raises sqlalchemy / OS errors when the database cannot be read."""
    with asyncio.Runner() as runner:
        engine = make_ship_engine(url)
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
                )
                for name in sorted(chains) or [""]
            ]
        finally:
            runner.run(engine.dispose())


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
