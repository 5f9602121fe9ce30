"""Reading the chained audit files (the spool) from where the shipper left off.

A position names a file by its inode, not its name: the live file is renamed when it
rotates, and the shipper must finish the file it was reading (its closing checkpoint
included) before it moves on to the next one. Only whole lines are read; a line still
being written is read at the next step. The reader never writes and takes no lock: the
writers append each record with one write(2), and a file is renamed only after its last
record.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dragoman.audit.chain import digest
from dragoman.audit.rotation import rotated_files

_LAST_SEQ = re.compile(r"\.(\d{12,})\.[^.]+$")


class PositionLost(Exception):
    """The file the position points into is gone (pruned, moved aside): start over."""


class SpoolError(Exception):
    """The spool cannot be read on (a rotated file ending in an incomplete line)."""


@dataclass(frozen=True, slots=True)
class Position:
    inode: tuple[int, int]
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolLine:
    data: bytes
    """The line without its newline: what is hashed and stored."""
    where: str
    """``file:byte offset``, for messages."""
    after: Position
    """The position after this line (where reading resumes once it is shipped)."""


@dataclass(frozen=True, slots=True)
class FileSpan:
    """What a closed (rotated) file holds: records ``first``..``last`` of ``chain``."""

    chain: str
    first: int
    last: int
    last_hash: str
    """The hash of its last line: the table's row at ``last`` must have it."""


def _seq_of(line: bytes | None, chain: str | None = None) -> tuple[str, int] | None:
    if line is None:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    found, seq = record.get("chain"), record.get("seq")
    if not isinstance(found, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if chain is not None and found != chain:
        return None
    return found, seq


def file_span(path: Path) -> FileSpan | None:
    """The span of the rotated file at ``path``; None when it is gone or does not read as
    whole records of one chain (such a file is left for an operator)."""
    from dragoman.audit.chained import last_line

    first = _seq_of(_first_line(path))
    if first is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        line = last_line(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    last = _seq_of(line, first[0])
    if line is None or last is None or last[1] < first[1]:
        return None
    return FileSpan(first[0], first[1], last[1], digest(line))


def line_digests(path: Path) -> list[str] | None:
    """The hash of every line of the closed file at ``path``, in order; None when it is
    gone or its last line is incomplete."""
    digests: list[str] = []
    try:
        with path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    return None
                digests.append(digest(line[:-1]))
    except FileNotFoundError:
        return None
    return digests


def is_empty(path: Path) -> bool:
    """Whether the file at ``path`` holds nothing (missing counts as empty)."""
    try:
        return os.stat(path).st_size == 0
    except FileNotFoundError:
        return True


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _first_line(path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            line = handle.readline()
    except FileNotFoundError:
        return None
    return line[:-1] if line.endswith(b"\n") else None


def _chain_of(line: bytes | None) -> str | None:
    if line is None:
        return None
    try:
        chain = json.loads(line).get("chain")
    except (ValueError, AttributeError):
        return None
    return chain if isinstance(chain, str) else None


class SpoolReader:
    """The files of one log (its rotated files in chain order, then the live file)."""

    def __init__(self, live: Path) -> None:
        self.live = live

    def files(self) -> list[Path]:
        return [*rotated_files(self.live), self.live]

    def newest_chain(self) -> str | None:
        """The chain the writers are continuing: that of the newest record on disk."""
        from dragoman.audit.chained import last_line

        for path in reversed(self.files()):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                line = last_line(fd)
            except OSError:
                line = None  # a torn tail: the writers stop there too
            finally:
                os.close(fd)
            if line is not None:
                return _chain_of(line)
        return None

    def start(self, chain: str, shipped: int | None) -> Position | None:
        """Where to read from when the table holds ``chain`` up to seq ``shipped``.

        Rotated files whose last seq (in their name) is below ``shipped`` are skipped, as
        long as the file read first belongs to ``chain``; the record ``shipped`` itself is
        read again, so the shipper checks that the file and the table agree where they
        meet. None when there is no file yet."""
        files = self.files()
        first = 0
        if shipped is not None:
            for index, path in enumerate(files[:-1]):
                match = _LAST_SEQ.search(path.name)
                if match is not None and int(match.group(1)) >= shipped:
                    first = index
                    break
            else:
                first = len(files) - 1
            if _chain_of(_first_line(files[first])) not in (chain, None):
                first = 0
        for path in files[first:]:
            inode = _inode(path)
            if inode is not None:
                return Position(inode, 0)
        return None

    def _locate(self, inode: tuple[int, int]) -> tuple[Path, bool]:
        """The file holding ``inode`` and whether it is final (rotated: no more lines)."""
        if _inode(self.live) == inode:
            return self.live, False
        for path in reversed(rotated_files(self.live)):
            if _inode(path) == inode:
                return path, True
        raise PositionLost

    def _next_file(self, current: Path) -> Position | None:
        files = self.files()
        try:
            index = files.index(current)
        except ValueError:
            raise PositionLost from None
        for path in files[index + 1 :]:
            inode = _inode(path)
            if inode is not None:
                return Position(inode, 0)
        return None

    def read(self, position: Position, limit: int) -> list[SpoolLine]:
        """Up to ``limit`` whole lines from ``position`` on, across rotated files."""
        lines: list[SpoolLine] = []
        while len(lines) < limit:
            path, final = self._locate(position.inode)
            with path.open("rb") as handle:
                st = os.fstat(handle.fileno())
                if (st.st_dev, st.st_ino) != position.inode:
                    raise PositionLost  # renamed between the stat and the open
                handle.seek(position.offset)
                offset = position.offset
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        if final:
                            raise SpoolError(f"{path.name} ends with an incomplete record")
                        return lines  # still being written
                    at = f"{path.name}:{offset}"
                    offset += len(raw)
                    position = Position(position.inode, offset)
                    lines.append(SpoolLine(raw[:-1], at, position))
                    if len(lines) >= limit:
                        return lines
            if not final:
                return lines
            following = self._next_file(path)
            if following is None:
                return lines
            position = following
        return lines
