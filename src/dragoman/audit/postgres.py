"""Shipping the chained audit file into the append-only ``audit_records`` table.

The request path keeps writing the chained JSON-lines file (a durable local spool: one
write(2) per record under the writers' lock), so a slow or unreachable database never
delays or refuses a request. A shipper copies every record, in seq order, into the table:

- **resumable**: nothing is remembered but what the table holds. After a restart the
  shipper reads the table's highest seq of the chain and reads the files from there
  (skipping rotated files by the last seq in their name); the record at that seq is read
  again and must be the one in the table, so a file and a table that disagree show at once;
- **never overwrites**: each batch looks up the rows it would add; a row that exists with
  another hash is tampering (of the file or the table), so shipping stops, naming the chain
  and seq, and nothing is written. Rows that exist with the same hash are skipped (a
  second shipper got there first); rows missing below the highest one are added back;
- **checks the chain on the way**: every record must be canonical and link to the one
  before it (seq + 1, prev = hash); a broken file stops shipping rather than filling the
  table with what ``dragoman audit verify`` would reject;
- **one shipper per chain** on PostgreSQL: a session advisory lock
  (``pg_try_advisory_lock``) on its own connection, held while the shipper runs; the other
  instances stand by and take over if that connection goes. (SQLite: no such lock; run
  one shipping process. Two would still write no duplicate, thanks to the primary key.)
- **one transaction per batch** (``audit.ship_batch`` records); the position in the files
  moves only after the commit, so a crash or a failed batch ships it again, never twice;
- **prunes what the table holds** (``audit.keep_rotated``): beyond the newest
  ``keep_rotated`` rotated files (by rotation time), a file is deleted only when the
  table's rows of its seqs are, one for one, the hashes of its lines. A file the table does
  not hold yet waits; one that differs from the table, or does not read as whole records,
  is kept for good, with a warning. Only the shipper holding the chain's lock prunes, so a
  stopped shipper (which keeps its lock) stops every other one from pruning too; and
  nothing is pruned while the live file is empty (it would continue the newest rotated
  file's chain).

Messages name the chain, seq and file, never a URL (it may hold a password) nor a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from dragoman.audit.chain import GENESIS, digest, is_canonical
from dragoman.audit.postgres_schema import audit_records, lock_key
from dragoman.audit.postgres_spool import (
    FileSpan,
    Position,
    PositionLost,
    SpoolError,
    SpoolLine,
    SpoolReader,
    file_span,
    is_empty,
    line_digests,
)
from dragoman.audit.rotation import older_than_newest, rotated_by_age
from dragoman.settings import AuditSettings
from dragoman.timeouts import within

log = logging.getLogger(__name__)

_T = audit_records


class ShippingStopped(Exception):
    """The file and the table disagree, or the file is broken: shipping stops for good
    (until an operator looks), and nothing in the table is changed."""


@dataclass(frozen=True, slots=True)
class _Record:
    chain: str
    seq: int
    prev: str
    hash: str
    line: str
    time: datetime | None
    where: str


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def parse(line: SpoolLine) -> _Record:
    """The row of one spool line; a line the verifier would reject stops shipping."""
    try:
        record = json.loads(line.data)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not is_canonical(record, line.data):
        raise ShippingStopped(
            f"the audit file holds a record that is not canonical JSON at {line.where}"
        )
    chain, seq, prev = record.get("chain"), record.get("seq"), record.get("prev")
    if (
        not isinstance(chain, str)
        or not isinstance(seq, int)
        or isinstance(seq, bool)
        or seq < 0
        or not isinstance(prev, str)
        or len(prev) != 64
    ):
        raise ShippingStopped(f"the audit file holds a record without chain fields at {line.where}")
    return _Record(
        chain,
        seq,
        prev,
        digest(line.data),
        line.data.decode("utf-8"),
        _time(record.get("time")),
        line.where,
    )


def make_ship_engine(url: str) -> AsyncEngine:
    """Its own small engine: the shipper holds one connection (and its advisory lock)."""
    if url.startswith("postgresql"):
        return create_async_engine(
            url,
            pool_size=1,
            max_overflow=1,
            pool_pre_ping=True,
            connect_args={"timeout": 5, "command_timeout": 30},
        )
    from dragoman.state.sql import make_engine

    return make_engine(url, pool_size=1)


class AuditShipper:
    """Copies the chained audit file at ``live`` (and its rotated files) into the table."""

    def __init__(
        self,
        live: Path,
        url: str,
        *,
        batch: int = 500,
        interval: float = 1.0,
        drain_timeout: float = 5.0,
        keep_rotated: int | None = None,
    ) -> None:
        """``keep_rotated``: prune shipped rotated files but the newest this many (None:
        never prune)."""
        self._reader = SpoolReader(live)
        self._keep_rotated = keep_rotated
        self._kept: set[Path] = set()
        """Rotated files found to differ from the table: never deleted, never read again."""
        self._warned: set[tuple[Path, str]] = set()
        self._engine = make_ship_engine(url)
        self._postgres = self._engine.dialect.name == "postgresql"
        self._batch = batch
        self._interval = interval
        self._drain_timeout = drain_timeout
        self._conn: AsyncConnection | None = None
        self._locked: set[str] = set()
        self._position: Position | None = None
        self._last: _Record | None = None
        """The last record shipped or found shipped (the next one must link to it)."""
        self._paused: str | None = None
        self.stopped: str | None = None
        """Why shipping stopped for good (None while it runs)."""
        self.standby = False
        """Another shipper holds the chain's lock; this one waits."""
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def failing(self) -> bool:
        """Shipping stopped for good (a broken chain in the file: an operator must look), or
        its loop ended while the shipper is open. A database that is away only pauses it:
        the file keeps every record and shipping resumes, so that is not a failure."""
        task = self._task
        return self.stopped is not None or (task is not None and task.done() and not self._closing)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-shipper")

    async def close(self) -> None:
        """Stop the loop, ship what is left (bounded by the drain timeout), disconnect."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await within(self._drain_timeout, self._finish())
            except TimeoutError:
                log.warning(
                    "audit shipping: the final drain did not finish; the next start resumes"
                )
            self._task = None
        await self._disconnect()
        await self._engine.dispose()

    async def _finish(self) -> None:
        """The loop's current step, then everything left (cancelled together on timeout)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.drain()

    async def _run(self) -> None:
        while not self._closing and self.stopped is None:
            try:
                await self.drain()
                await self.prune()
            except Exception:  # a bug must not end shipping silently, nor the proxy
                log.exception("audit shipping failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await within(self._interval, self._wake.wait())

    async def drain(self) -> int:
        """Step until nothing is left to ship (or the database is away). Returns the count
        of lines it moved past."""
        total = 0
        while (moved := await self.step()) > 0:
            total += moved
        return total

    async def prune(self) -> list[Path]:
        """Delete the rotated files the table holds (see the module's docstring); returns
        them. Only the shipper that holds the spool's chain prunes: nothing while shipping
        is stopped, standing by, or the database is away."""
        keep = self._keep_rotated
        if keep is None or self.stopped is not None or self.standby:
            return []
        live = self._reader.live
        try:
            candidates = older_than_newest(await asyncio.to_thread(rotated_by_age, live), keep)
            # An empty live file continues the newest rotated file's chain (a writer that
            # rotated and then failed to append): without that file it would start anew.
            if not candidates or await asyncio.to_thread(is_empty, live):
                return []
            chain = await asyncio.to_thread(self._reader.newest_chain)
        except OSError as exc:
            self._warn_once(live, f"cannot list the spool ({type(exc).__name__})")
            return []
        pruned: list[Path] = []
        through = -1
        try:
            conn = await self._connection()
            if chain is None or not await self._lock(conn, chain):
                return []
            for path in candidates:
                if path in self._kept:
                    continue
                span, verdict = await self._judge(conn, path)
                if verdict == "unshipped":
                    continue  # not in the table yet: shipping will get there
                if span is None or verdict != "held":
                    self._kept.add(path)
                    self._warn_once(path, verdict)
                    continue
                try:
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                except OSError as exc:
                    self._warn_once(path, f"cannot delete it ({type(exc).__name__})")
                    continue
                pruned.append(path)
                through = max(through, span.last)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            await self._pause(exc)
        if pruned:
            log.info(
                "audit shipping: deleted %d rotated file(s) the table holds, through seq %d",
                len(pruned),
                through,
            )
        return pruned

    async def _judge(self, conn: AsyncConnection, path: Path) -> tuple[FileSpan | None, str]:
        """Whether the table holds every record of the rotated file at ``path``: ``held``,
        ``unshipped`` (the table ends before the file does), or why the file must stay.
        The last line is compared first (cheap); the whole file only when it matches."""
        try:
            span = await asyncio.to_thread(file_span, path)
        except OSError as exc:
            return None, f"cannot read it ({type(exc).__name__})"
        if span is None:
            return None, "it does not read as whole records of one chain"
        last = (
            await conn.execute(
                sa.select(_T.c.hash).where(_T.c.chain == span.chain, _T.c.seq == span.last)
            )
        ).scalar_one_or_none()
        if last is None:
            highest = await self._highest(conn, span.chain)
            await conn.commit()
            if highest is None or highest < span.last:
                return span, "unshipped"
            return span, f"the table has no row at seq {span.last} of chain {span.chain}"
        if last != span.last_hash:
            await conn.commit()
            return span, f"the table's row at seq {span.last} is another record"
        try:
            digests = await asyncio.to_thread(line_digests, path)
        except OSError as exc:
            await conn.commit()
            return span, f"cannot read it ({type(exc).__name__})"
        rows = (
            await conn.execute(
                sa.select(_T.c.seq, _T.c.hash)
                .where(_T.c.chain == span.chain, _T.c.seq.between(span.first, span.last))
                .order_by(_T.c.seq)
            )
        ).all()
        await conn.commit()
        if digests is None or len(digests) != span.last - span.first + 1:
            return span, "it does not read as whole records of one chain"
        expected = list(zip(range(span.first, span.last + 1), digests, strict=True))
        if [(int(seq), str(found)) for seq, found in rows] != expected:
            return span, f"the table's rows of seqs {span.first}-{span.last} differ from it"
        return span, "held"

    def _warn_once(self, path: Path, reason: str) -> None:
        if (path, reason) not in self._warned:
            self._warned.add((path, reason))
            log.warning("audit shipping: keeping rotated file %s: %s", path.name, reason)

    # -- one step --------------------------------------------------------------------------

    async def step(self) -> int:
        """Ship the next batch. Returns how many file lines it moved past (0: nothing to do,
        the database is unavailable, another shipper holds the lock, or shipping stopped)."""
        if self.stopped is not None:
            return 0
        try:
            moved = await self._step()
        except ShippingStopped as exc:
            self.stopped = str(exc)
            log.error("audit shipping stopped: %s", exc)
            return 0
        except PositionLost:
            self._position = None  # the files moved twice in one step: the next one retries
            return 0
        except IntegrityError:
            # A row appeared between our look-up and our insert (another shipper without
            # the lock, e.g. on SQLite): the next step compares it like any existing row.
            await self._rollback()
            return 0
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            await self._pause(exc)
            return 0
        if self._paused is not None:
            log.warning("audit shipping resumed")
            self._paused = None
        return moved

    async def _step(self) -> int:
        try:
            return await self._step_from_position()
        except PositionLost:
            # The file being read was pruned or moved aside (or renamed under our feet):
            # start over from what the table holds, once, so a drain does not stop here.
            self._position = None
            return await self._step_from_position()

    async def _step_from_position(self) -> int:
        conn = await self._connection()
        if self._position is None:
            chain = await asyncio.to_thread(self._reader.newest_chain)
            if chain is None or not await self._lock(conn, chain):
                return 0
            shipped = await self._highest(conn, chain)
            self._position = await asyncio.to_thread(self._reader.start, chain, shipped)
            self._last = None
            if self._position is None:
                return 0
        try:
            lines = await asyncio.to_thread(self._reader.read, self._position, self._batch)
        except SpoolError as exc:
            raise ShippingStopped(str(exc)) from None
        if not lines:
            return 0
        records = [parse(line) for line in lines]
        self._check_links(records)
        for chain in dict.fromkeys(r.chain for r in records):
            if not await self._lock(conn, chain):
                return 0
        async with _transaction(conn):
            for chain in dict.fromkeys(r.chain for r in records):
                await self._ship(conn, [r for r in records if r.chain == chain])
        self._position = lines[-1].after
        self._last = records[-1]
        return len(lines)

    def _check_links(self, records: list[_Record]) -> None:
        before = self._last
        for record in records:
            if before is not None and record.chain != before.chain:
                if record.seq != 0 or record.prev != GENESIS:
                    raise ShippingStopped(
                        f"chain {record.chain} seq {record.seq} at {record.where} follows a"
                        f" record of chain {before.chain} (run dragoman audit verify)"
                    )
            elif before is not None and (
                record.seq != before.seq + 1 or record.prev != before.hash
            ):
                raise ShippingStopped(
                    f"chain {record.chain} seq {record.seq} at {record.where} does not link to"
                    f" seq {before.seq} before it (run dragoman audit verify)"
                )
            before = record

    async def _ship(self, conn: AsyncConnection, records: list[_Record]) -> None:
        chain, first = records[0].chain, records[0]
        rows = await conn.execute(
            sa.select(_T.c.seq, _T.c.hash).where(
                _T.c.chain == chain, _T.c.seq.between(first.seq - 1, records[-1].seq)
            )
        )
        existing = {int(seq): str(hash_) for seq, hash_ in rows}
        linked = self._last is not None and self._last.chain == chain
        if not linked and first.seq - 1 in existing and existing[first.seq - 1] != first.prev:
            raise ShippingStopped(
                f"chain {chain} seq {first.seq}: the file's record does not link to row"
                f" {first.seq - 1} of the table; nothing was overwritten"
            )
        for record in records:
            found = existing.get(record.seq)
            if found is not None and found != record.hash:
                raise ShippingStopped(
                    f"chain {chain} seq {record.seq}: the table holds another record than"
                    f" the audit file ({record.where}); nothing was overwritten"
                )
        new = [r for r in records if r.seq not in existing]
        if new:
            await conn.execute(
                _T.insert(),
                [
                    {
                        "chain": r.chain,
                        "seq": r.seq,
                        "prev": r.prev,
                        "hash": r.hash,
                        "line": r.line,
                        "time": r.time,
                    }
                    for r in new
                ],
            )

    # -- the database ----------------------------------------------------------------------

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            self._conn = await self._engine.connect()
        return self._conn

    async def _lock(self, conn: AsyncConnection, chain: str) -> bool:
        if not self._postgres or chain in self._locked:
            return True
        got = (
            await conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(chain)}
            )
        ).scalar_one()
        await conn.commit()  # a session lock: it outlives the transaction
        if not got:
            if not self.standby:
                log.info("audit shipping: another shipper holds chain %s; standing by", chain)
            self.standby = True
            self._position = None  # whoever ships meanwhile moves the table on
            return False
        self.standby = False
        self._locked.add(chain)
        return True

    async def _highest(self, conn: AsyncConnection, chain: str) -> int | None:
        seq = (
            await conn.execute(sa.select(sa.func.max(_T.c.seq)).where(_T.c.chain == chain))
        ).scalar_one_or_none()
        await conn.commit()
        return None if seq is None else int(seq)

    async def _rollback(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await self._conn.rollback()

    async def _pause(self, exc: BaseException) -> None:
        cause: BaseException = exc
        if isinstance(exc, DBAPIError) and exc.orig is not None:
            cause = exc.orig
        while cause.__cause__ is not None:  # the driver's own error names the problem best
            cause = cause.__cause__
        reason = type(cause).__name__
        if self._paused != reason:
            log.warning("audit shipping paused: the audit database is unavailable (%s)", reason)
        self._paused = reason
        await self._disconnect()

    async def _disconnect(self) -> None:
        """Drop the connection (and with it the advisory locks)."""
        conn, self._conn = self._conn, None
        self._locked.clear()
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.invalidate()
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.close()


@contextlib.asynccontextmanager
async def _transaction(conn: AsyncConnection) -> Any:
    """Commit on success, roll back on any failure (the position then stays put)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(SQLAlchemyError, OSError):
            await conn.rollback()
        raise
    await conn.commit()


def open_audit_shipper(settings: AuditSettings) -> AuditShipper | None:
    """The shipper the audit settings ask for (None without ``audit.database_url``)."""
    if settings.database_url is None:
        return None
    return AuditShipper(
        settings.path,
        settings.database_url,
        batch=settings.ship_batch,
        interval=settings.ship_interval,
        drain_timeout=settings.ship_drain_timeout,
        keep_rotated=settings.keep_rotated,
    )
