"""The audit trail the proxy writes through: fail closed, and group commit.

While the sink fails, new requests are refused (:attr:`AuditTrail.broken`, SEMANTICS §6).

Group commit: the records requests :meth:`~AuditTrail.commit` during one turn of the event
loop are written together at the start of the next, in one call to the sink (one lock and
one ``write(2)`` for the file sinks) instead of one each. Each committer waits for that
write and learns its own outcome, so "written before the answer completes" and "written
before a write is forwarded" hold exactly as with a write of its own; what a request pays
is one turn of the loop, what a busy worker saves is most of the system calls of its
records. Nothing is queued past that turn: a record is written, or its request learns that
it was not, before the request goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from dragoman.audit.sink import AuditSink

if TYPE_CHECKING:
    from dragoman.observability import RequestMeter

log = logging.getLogger(__name__)


class _Group:
    """The records committed in one turn of the loop, and whether they were written."""

    __slots__ = ("records", "written")

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.written: bool | None = None  # None: not written yet


class AuditTrail:
    """Writes records; while the sink fails, new requests are refused (fail closed).

    Every answered request's record passes here exactly once, so this is where the request
    metrics are counted (:class:`~dragoman.observability.RequestMeter`); the meter skips the
    other records that pass too (mapping accesses, a write's ``forward`` record)."""

    def __init__(self, sink: AuditSink, meter: RequestMeter | None = None) -> None:
        self._sink = sink
        self._meter = meter
        self._group: _Group | None = None
        self.broken = False

    def write(self, record: dict[str, object]) -> bool:
        """Write ``record`` now (after the records waiting for their group, in order); True
        once it is written, False if the sink failed it (the trail is then broken)."""
        group = self._group
        if group is not None:
            self._write_group(group)
        return self._write([record])

    def write_many(self, records: list[dict[str, Any]]) -> bool:
        """Write ``records`` now, in one call to the sink (one lock and one ``write(2)``
        for the file sinks), after the records waiting for their group: what a batch of
        work recorded together costs the event loop once, not once per record. True once
        they are written, False if the sink failed them (the trail is then broken)."""
        group = self._group
        if group is not None:
            self._write_group(group)
        return self._write(records) if records else not self.broken

    async def commit(self, record: dict[str, object]) -> bool:
        """Write ``record`` with the others committed in this turn of the loop; True once
        it is written, False if the sink failed it (the trail is then broken)."""
        group = self._group
        if group is None:
            group = self._group = _Group()
            asyncio.get_running_loop().call_soon(self._write_group, group)
        group.records.append(record)
        # The loop runs callbacks in the order they were scheduled: the group's write was
        # scheduled before this task's wake-up, so it has run when the task goes on.
        await asyncio.sleep(0)
        if group.written is None:  # never, by that order; but never go on unwritten
            self._write_group(group)
        assert group.written is not None
        return group.written

    def close(self) -> None:
        group = self._group
        if group is not None:
            self._write_group(group)
        self._sink.close()

    def _write_group(self, group: _Group) -> None:
        if group.written is not None:
            return  # written early, by a write() or close() that came first
        if self._group is group:
            self._group = None
        group.written = self._write(group.records)

    def _write(self, records: list[dict[str, Any]]) -> bool:
        try:
            self._sink.write_many(records)
        except Exception:  # whatever fails, the records were not written: fail closed
            if not self.broken:
                log.exception("audit sink failed; refusing requests until it recovers")
            self.broken = True
        else:
            self.broken = False
        meter = self._meter
        if meter is not None:
            for record in records:
                meter.written(not self.broken)
                meter.request(record)
        return not self.broken
