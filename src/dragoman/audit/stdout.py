"""Standard output shared by the workers of `dragoman serve`, written whole line groups.

A pipe takes a write of more than PIPE_BUF (4096) bytes in pieces, between which another
writer's can land, so lines of several workers could be cut mid-line. When a lock file is
named (by default the one in :data:`LOCK_ENV`, which `dragoman serve` sets for its workers
when the audit goes to stdout) each write holds an exclusive ``flock`` on it, a file this
process opens itself: a lock on the shared stdout would not exclude anybody, since every
worker holds the same open file description. Without one (a single process) no lock is
taken.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

LOCK_ENV = "DRAGOMAN_AUDIT_STDOUT_LOCK"


class SharedStdout:
    """Writes whole lines to standard output, under the workers' lock when there is one."""

    def __init__(self, lock_path: Path | None = None) -> None:
        if lock_path is None and os.environ.get(LOCK_ENV):
            lock_path = Path(os.environ[LOCK_ENV])
        self._lock_fd = (
            -1 if lock_path is None else os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        )

    def write(self, data: bytes) -> None:
        """``data`` (whole lines) and a flush, under the lock when there is one."""
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        finally:
            if self._lock_fd >= 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
