"""Where audit records go. Every record is redacted before it is written.

By default records are hash-chained (:mod:`dragoman.audit.chained`, docs/audit.md); the
plain sinks here write the same records without chain fields (``audit.chain = false``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dragoman.audit.chained import ChainedFileSink, ChainedStdoutSink
from dragoman.audit.checkpoint import CheckpointSigner
from dragoman.audit.redact import OWN_FIELDS, redact_record
from dragoman.audit.stdout import SharedStdout
from dragoman.settings import AuditSettings


class AuditSink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """The records in order, as one write where the sink can (group commit)."""
        ...

    def close(self) -> None: ...


def encode(record: dict[str, Any]) -> bytes:
    """The unchained line of ``record`` (``audit.chain = false``)."""
    return (
        json.dumps(redact_record(record), separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n"
    )


class FileSink:
    """JSON lines appended with O_APPEND: each record is one write(2), so the lines of
    several worker processes never interleave."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._torn = False

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        data = b"".join(encode(record) for record in records)
        if self._torn and not self._ends_a_line():
            data = b"\n" + data
        written = os.write(self._fd, data)
        # A full disk takes part of a group. Other workers may append after it (no lock
        # here), so a torn line cannot be cut off: the next write ends it first, or the
        # next record would be glued to it.
        self._torn = written != len(data)
        if self._torn:
            raise OSError(f"short write to the audit file ({written} of {len(data)} bytes)")

    def _ends_a_line(self) -> bool:
        size = os.fstat(self._fd).st_size
        return size == 0 or os.pread(self._fd, 1, size - 1) == b"\n"

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        except OSError:
            pass  # not every file can be fsynced (a pipe, /dev/full); the writes are done
        finally:
            os.close(self._fd)
            self._fd = -1


class StdoutSink:
    """Unchained JSON lines on standard output (kept whole: :class:`SharedStdout`)."""

    def __init__(self, lock_path: Path | None = None) -> None:
        self._stdout = SharedStdout(lock_path)

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        self._stdout.write(b"".join(encode(record) for record in records))

    def close(self) -> None:
        try:
            self._stdout.write(b"")
        finally:
            self._stdout.close()


__all__ = ["OWN_FIELDS", "AuditSink", "FileSink", "StdoutSink", "encode", "open_audit_sink"]


def open_audit_sink(
    settings: AuditSettings, *, clock: Callable[[], float] = time.time
) -> AuditSink:
    """The sink the audit settings name: hash-chained unless ``audit.chain`` is false.

    Raises CheckpointKeyError when the checkpoint key cannot be loaded (fail at start)."""
    if not settings.chain:
        return StdoutSink() if settings.sink == "stdout" else FileSink(settings.path)
    signer = (
        None
        if settings.checkpoint_key_file is None
        else CheckpointSigner.from_pem_file(settings.checkpoint_key_file)
    )
    if settings.sink == "stdout":
        return ChainedStdoutSink(
            checkpoint_every=settings.checkpoint_every, signer=signer, clock=clock
        )
    return ChainedFileSink(
        settings.path,
        max_bytes=settings.max_bytes,
        # With a shipper, only it knows which rotated files are safe to delete.
        keep_rotated=settings.keep_rotated if settings.database_url is None else None,
        checkpoint_every=settings.checkpoint_every,
        signer=signer,
        clock=clock,
    )
