"""Where audit records go. Every record is redacted before it is written."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from dragoman.audit.redact import redact
from dragoman.settings import AuditSettings


class AuditSink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


# Values dragoman generates itself (ids, times, numbers): never free text, and redacting
# them would only corrupt them (a UUID can hold a Luhn-valid digit run).
OWN_FIELDS = frozenset(
    {
        "time",
        "event",
        "audit_id",
        "jti",
        "kid",
        "mapping_id",
        "customer",
        "decision",
        "code",
        "reason",
        "status",
        "operation",
        "scope",
        "authenticator",
        "upstream_status",
        "stream_error",
        "latency_ms",
        "session",
        # mapping records (dragoman.mapping.audit)
        "request",
        "account_index",
        "action",
        "outcome",
        "mapping_status",
        "version",
    }
)


def encode(record: dict[str, Any]) -> bytes:
    cleaned = {k: v if k in OWN_FIELDS else redact(v) for k, v in record.items()}
    return json.dumps(cleaned, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class FileSink:
    """JSON lines appended with O_APPEND: each record is one write(2), so the lines of
    several worker processes never interleave."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, encode(record))

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
    def write(self, record: dict[str, Any]) -> None:
        sys.stdout.buffer.write(encode(record))
        sys.stdout.buffer.flush()

    def close(self) -> None:
        sys.stdout.buffer.flush()


def open_audit_sink(settings: AuditSettings) -> AuditSink:
    """The sink the audit settings name."""
    if settings.sink == "stdout":
        return StdoutSink()
    return FileSink(settings.path)
