"""Hash-chained audit sinks: a JSON-lines file shared by several writers, and stdout.

File sink, per write, under an exclusive ``flock`` on ``<file>.lock`` (a lock file, not
the log itself: the log is renamed away on rotation, and a lock on a renamed inode would
no longer exclude the writers that already opened the new file):

1. *sync*: if the live file is not the inode this writer has open (another writer rotated
   it), reopen it; if its size is not the size this writer left it at (another writer
   appended), re-read its last line (or, for an empty file, the last line of the newest
   rotated file) and continue the chain from there;
2. *rotate* when ``max_bytes`` is set and the file has reached it;
3. append the chained records (a group commit's, :mod:`dragoman.audit.trail`), with any
   signed checkpoint that falls due among them, in one ``write(2)`` on an ``O_APPEND``
   descriptor.

fsync: at every checkpoint, on rotation (the old file, before the rename, then the
directory) and on close; records in between reach the disk when the kernel writes them.

A tail that cannot be read (a torn last line, a record without chain fields) raises
:class:`~dragoman.audit.chain.ChainError`, an OSError: the proxy refuses requests until an
operator looks, rather than start a second chain that would hide the damage. So does a
tail behind the one this writer last knew (records cut from the live file, the file
removed or replaced under it): that one holds until the process restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dragoman.audit.chain import CHAIN_FIELDS, ChainError, Tail, link
from dragoman.audit.checkpoint import EVENT as CHECKPOINT
from dragoman.audit.checkpoint import CheckpointSigner, checkpoint_line
from dragoman.audit.pci import complete, process_source
from dragoman.audit.record import iso_time
from dragoman.audit.redact import redact_record
from dragoman.audit.rotation import (
    older_than_newest,
    rotated_by_age,
    rotated_files,
    rotated_name,
)
from dragoman.audit.stdout import SharedStdout

log = logging.getLogger(__name__)

_CHUNK = 8192

PRUNED_PER_ROTATION = 16
"""Rotated files one rotation deletes at most (``keep_rotated`` set on a large spool catches
up over the next rotations rather than in one request's write)."""


def prepare(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it is chained: PCI fields completed, redacted, no chain fields of its
    own (only the sink numbers and links records)."""
    done = redact_record(complete(record))
    for name in CHAIN_FIELDS:
        done.pop(name, None)
    return done


def checkpoint_due(tail: Tail, every: int) -> bool:
    """Checkpoints fall on the seqs s with (s + 1) % every == 0, whoever writes them."""
    return every > 0 and (tail.next_seq + 1) % every == 0


def last_line(fd: int) -> bytes | None:
    """The last line of the file open on ``fd`` (without its newline); None if empty."""
    end = os.fstat(fd).st_size
    if end == 0:
        return None
    if os.pread(fd, 1, end - 1) != b"\n":
        raise ChainError("the audit file ends with an incomplete record")
    pos, tail = end - 1, b""
    while pos > 0:
        start = max(0, pos - _CHUNK)
        tail = os.pread(fd, pos - start, start) + tail
        pos = start
        cut = tail.rfind(b"\n")
        if cut >= 0:
            return tail[cut + 1 :]
    return tail


def _went_back(tail: Tail, known: Tail) -> bool:
    """Whether the chain's end read from the files is behind, or other than, an end this
    writer knew: another chain, an earlier seq, or the same seq with another hash. An
    empty log's end is no reference: each writer makes up a chain id for it until the
    first record fixes one."""
    if known.next_seq == 0:
        return False
    if tail.chain != known.chain or tail.next_seq < known.next_seq:
        return True
    return tail.next_seq == known.next_seq and tail.last_hash != known.last_hash


class _Checkpoints:
    """What both chained sinks share: the signer, the schedule and the checkpoint's fields."""

    def __init__(
        self,
        resource: str,
        checkpoint_every: int,
        signer: CheckpointSigner | None,
        clock: Callable[[], float],
    ) -> None:
        self._resource = resource
        self._every = checkpoint_every
        self._signer = signer
        self._clock = clock

    def due(self, tail: Tail) -> bool:
        return self._signer is not None and checkpoint_due(tail, self._every)

    def needed_at_end(self, tail: Tail) -> bool:
        """A file or stream that ends should end with a checkpoint (truncation shows)."""
        return self._signer is not None and tail.last_event != CHECKPOINT

    def line(self, tail: Tail) -> tuple[bytes, Tail]:
        if self._signer is None:  # callers ask due() / needed_at_end() first
            raise RuntimeError("no checkpoint key")
        fields = {"user": "dragoman", "source": process_source(), "resource": self._resource}
        return checkpoint_line(tail, self._signer, time=iso_time(self._clock()), fields=fields)


class ChainedFileSink:
    """One chain in one file (and its rotated predecessors), shared by every writer."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 0,
        keep_rotated: int | None = None,
        checkpoint_every: int = 0,
        signer: CheckpointSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``keep_rotated``: after each rotation, delete the rotated files but the newest
        this many (None: keep them all; with a shipper, the shipper prunes instead)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._max_bytes = max_bytes
        self._keep_rotated = keep_rotated
        self._clock = clock
        self._checkpoints = _Checkpoints(path.name, checkpoint_every, signer, clock)
        self._lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        self._size = -1
        self._tail: Tail | None = None
        try:
            with self._locked():
                self._sync()  # an unreadable chain fails at start, not on the first request
        except BaseException:
            self._release()
            raise

    # -- writing ---------------------------------------------------------------------------

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """The records (and any checkpoint that falls among them) in one ``write(2)``,
        under one lock. Rotation is checked once, before them: a file may pass
        ``max_bytes`` by one group."""
        bodies = [prepare(record) for record in records]
        with self._locked():
            tail = self._sync()
            rotated = bool(self._max_bytes) and self._size >= self._max_bytes
            if rotated:
                tail = self._rotate(tail)
            lines: list[bytes] = []
            checkpointed = False
            for body in bodies:
                line, tail = link(body, tail)
                lines.append(line)
                if self._checkpoints.due(tail):
                    line, tail = self._checkpoints.line(tail)
                    lines.append(line)
                    checkpointed = True
            self._append(b"".join(lines), tail)
            if checkpointed:
                os.fsync(self._fd)
            if rotated and self._keep_rotated is not None:
                self._prune(self._keep_rotated)

    def close(self) -> None:
        if self._fd < 0 and self._lock_fd < 0:
            return
        try:
            with self._locked():
                tail = self._sync()
                if self._checkpoints.needed_at_end(tail):
                    self._append(*self._checkpoints.line(tail))
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
        except OSError as exc:
            # The records are written; only the closing checkpoint is missing.
            log.warning("audit: no closing checkpoint (%s)", exc)
        finally:
            self._release()

    # -- under the lock ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd < 0:
            raise ChainError("the audit sink is closed")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _sync(self) -> Tail:
        """Point at the live file and at the chain's real tail (other writers move both)."""
        try:
            live: os.stat_result | None = os.stat(self._path)
        except FileNotFoundError:
            live = None
        inode = None if live is None else (live.st_dev, live.st_ino)
        if live is None or self._fd < 0 or inode != self._inode:
            self._reopen()
            size = os.fstat(self._fd).st_size
        else:
            size = live.st_size  # the inode this writer has open: one stat, not two
        if self._tail is None or size != self._size:
            known, self._tail = self._tail, None  # unknown until the file is read
            tail = self._read_tail()
            if known is not None and _went_back(tail, known):
                # Writers only ever add: the chain's end goes back only when records were
                # cut from the live file, or it was replaced or removed. Carrying on from
                # there would link over the gap, and later checkpoints would sign it. The
                # end this writer knew stays the reference, so every write refuses until
                # an operator looks (verify, then restart).
                self._tail = known
                raise ChainError(
                    f"the audit chain went back (its last record is seq {tail.next_seq - 1}"
                    f" of chain {tail.chain}, this writer knew seq {known.next_seq - 1} of"
                    f" chain {known.chain}): records were removed or the file replaced"
                )
            self._tail, self._size = tail, size
        return self._tail

    def _reopen(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        opened = os.fstat(self._fd)
        self._inode = (opened.st_dev, opened.st_ino)
        self._size = -1

    def _read_tail(self) -> Tail:
        line = last_line(self._fd)
        if line is None:
            # An empty live file continues the newest rotated file (a crash between the
            # rotation and the first write of the new file leaves it empty).
            for rotated in reversed(rotated_files(self._path)):
                fd = os.open(rotated, os.O_RDONLY)
                try:
                    line = last_line(fd)
                finally:
                    os.close(fd)
                if line is not None:
                    break
        return Tail.genesis() if line is None else Tail.after(line)

    def _append(self, line: bytes, tail: Tail) -> None:
        # Unknown until the write is known to be whole: re-read next time.
        before, self._size = self._size, -1
        start = before if before >= 0 else os.fstat(self._fd).st_size
        written = os.write(self._fd, line)
        if written != len(line):
            # A full disk took part of the group. Its records were never acknowledged; left
            # in place, the torn line would refuse every later write (an incomplete last
            # record) long after space is freed. Under the lock, nobody wrote after it.
            os.ftruncate(self._fd, start)
            raise ChainError(f"short write to the audit file ({written} of {len(line)} bytes)")
        # Under the lock nobody else appends: the size is the one this writer left plus
        # its line. Bytes appended by anything that ignores the lock then differ from it,
        # and the next write reads the tail again instead of chaining past them.
        self._size = before + written if before >= 0 else os.fstat(self._fd).st_size
        self._tail = tail

    def _rotate(self, tail: Tail) -> Tail:
        """Close the live file with a checkpoint, rename it, start a new one; the chain
        goes on in the new file. Returns the tail (moved by the closing checkpoint)."""
        if self._checkpoints.needed_at_end(tail):
            line, tail = self._checkpoints.line(tail)
            self._append(line, tail)
        os.fsync(self._fd)
        os.rename(self._path, rotated_name(self._path, self._clock(), tail.next_seq - 1))
        self._fsync_directory()
        self._reopen()
        self._size = os.fstat(self._fd).st_size
        self._tail = tail
        return tail

    def _prune(self, keep: int) -> None:
        """Delete the rotated files but the newest ``keep``, at most
        :data:`PRUNED_PER_ROTATION` of them (this runs on the event loop, inside a write).
        Only after the new live file holds a record: an empty live file continues the
        newest rotated file, and without one the next write would start a new chain.
        Housekeeping: the records are written whether or not it succeeds, so a failure is
        logged, not raised."""
        pruned = 0
        doomed = older_than_newest(rotated_by_age(self._path), keep)[:PRUNED_PER_ROTATION]
        for path in doomed:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("audit: cannot delete rotated file %s (%s)", path.name, exc)
                break
            pruned += 1
        if pruned:
            log.info("audit: deleted %d rotated file(s), keeping the newest %d", pruned, keep)

    def _fsync_directory(self) -> None:
        fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            pass  # not every file system can fsync a directory; the rename is done
        finally:
            os.close(fd)

    def _release(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1


class ChainedStdoutSink:
    """One chain per process on standard output: worker processes sharing a stdout write
    interleaved chains, each with its own ``chain`` id (``dragoman audit verify --chain``),
    their lines kept whole by :class:`~dragoman.audit.stdout.SharedStdout`."""

    def __init__(
        self,
        *,
        checkpoint_every: int = 0,
        signer: CheckpointSigner | None = None,
        clock: Callable[[], float] = time.time,
        lock_path: Path | None = None,
    ) -> None:
        self._tail = Tail.genesis()
        self._checkpoints = _Checkpoints("stdout", checkpoint_every, signer, clock)
        self._stdout = SharedStdout(lock_path)

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        lines: list[bytes] = []
        tail = self._tail  # moved once the lines are out: a record that fails moves nothing
        for record in records:
            line, tail = link(prepare(record), tail)
            lines.append(line)
            if self._checkpoints.due(tail):
                line, tail = self._checkpoints.line(tail)
                lines.append(line)
        self._stdout.write(b"".join(lines))
        self._tail = tail

    def close(self) -> None:
        line = b""
        if self._checkpoints.needed_at_end(self._tail):
            line, self._tail = self._checkpoints.line(self._tail)
        try:
            self._stdout.write(line)
        finally:
            self._stdout.close()
