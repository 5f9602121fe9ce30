"""Names of rotated audit files, and the files of one log in chain order.

The live file ``audit.jsonl`` is renamed to ``audit.<UTC time>.<last seq>.jsonl`` when it
grows past ``audit.max_bytes``: the time is ``YYYYmmddTHHMMSSffffffZ`` and the last seq (the
seq of its last record) is zero-padded to 12 digits. Files are put in chain order by that
seq, never by time: writers on several hosts may disagree about the time, the chain does not.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path


def rotated_name(live: Path, now: float, last_seq: int) -> Path:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return live.with_name(f"{live.stem}.{stamp}.{last_seq:012d}{live.suffix}")


def _pattern(live: Path) -> re.Pattern[str]:
    return re.compile(
        rf"^{re.escape(live.stem)}\.(\d{{8}}T\d{{12}}Z)\.(\d{{12,}}){re.escape(live.suffix)}$"
    )


def _rotated(live: Path) -> list[tuple[int, str, Path]]:
    """(last seq, rotation time, path) of each rotated file of the log at ``live``."""
    pattern = _pattern(live)
    found: list[tuple[int, str, Path]] = []
    if live.parent.is_dir():
        for entry in live.parent.iterdir():
            match = pattern.match(entry.name)
            if match is not None and entry.is_file():
                found.append((int(match.group(2)), match.group(1), entry))
    return found


def rotated_files(live: Path) -> list[Path]:
    """The rotated files of the log whose live file is ``live``, in chain order."""
    return [path for _, _, path in sorted(_rotated(live))]


def rotated_by_age(live: Path) -> list[Path]:
    """The rotated files by the time they were rotated, oldest first: what retention goes
    by. Seqs restart with a new chain (a log moved aside for repair), times do not; the
    writers of one log share a host, and so a clock."""
    return [path for _, _, path in sorted(_rotated(live), key=lambda f: (f[1], f[0]))]


def log_files(directory: Path, suffix: str = ".jsonl") -> list[Path]:
    """Every file of the one log in ``directory``: its rotated files, then the live file.

    Raises ValueError when the directory holds no log or several (name the live file then).
    """
    candidates = sorted(p for p in directory.iterdir() if p.suffix == suffix and p.is_file())
    lives = [p for p in candidates if not any(_pattern(o).match(p.name) for o in candidates)]
    if len(lives) > 1:
        names = ", ".join(p.name for p in lives)
        raise ValueError(f"{directory} holds several logs ({names}); name the live file")
    if not lives:
        if candidates:
            raise ValueError(f"{directory} holds rotated files but no live file; name them")
        raise ValueError(f"{directory} holds no {suffix} log")
    return [*rotated_files(lives[0]), lives[0]]


def older_than_newest(files: list[Path], keep: int) -> list[Path]:
    """``files`` (oldest first) but the newest ``keep``: what a retention of ``keep`` prunes."""
    return files[: max(0, len(files) - keep)]
