"""Verifying a chained audit log (``dragoman audit verify``; the rules in docs/audit.md).

The verifier reads the files in chain order and stops at the FIRST problem, naming the
index (the seq the record at that place should have) and what is wrong:

- ``edited``: a line is not JSON, not in canonical form, lacks chain fields, or does not
  hash to the ``prev`` of the record after it (that record's predecessor was changed);
- ``missing``: a seq is skipped and does not appear later (records deleted, or a rotated
  file taken away); a chain that does not start at seq 0 / GENESIS misses its head;
- ``reordered``: a seq is skipped but appears later, or comes back after a higher one;
- ``spliced``: a record of another chain (its ``chain`` id differs);
- ``checkpoint mismatch``: a checkpoint's count or last_hash is not the chain before it;
- ``bad signature``: a checkpoint signed by no key given, or not verifying;
- ``truncated``: the last line is incomplete, fewer records than ``expect_at_least``, or
  (``closed``) the log does not end with a checkpoint (an empty log does not either);
- ``missing`` as well: no record at all belongs to the ``chain`` asked for.

Signatures are checked only when keys are given; the chain itself needs no key.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from dragoman.audit.chain import GENESIS, digest, is_canonical
from dragoman.audit.checkpoint import EVENT as CHECKPOINT
from dragoman.audit.checkpoint import signature_valid


@dataclass(frozen=True, slots=True)
class Problem:
    index: int
    kind: str
    detail: str
    where: str

    def __str__(self) -> str:
        return f"index {self.index}: {self.kind}: {self.detail} ({self.where})"


@dataclass(frozen=True, slots=True)
class Report:
    records: int
    checkpoints: int
    signatures_checked: bool
    problem: Problem | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"chain broken at {self.problem}"
        unchecked = (
            "" if self.signatures_checked or not self.checkpoints else " (signatures not checked)"
        )
        return f"{self.records} records, {self.checkpoints} checkpoints{unchecked}, chain intact"


@dataclass(frozen=True, slots=True)
class _Line:
    where: str
    data: bytes
    whole: bool


def _lines(files: list[Path]) -> Iterator[_Line]:
    for path in files:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                whole = raw.endswith(b"\n")
                yield _Line(f"{path}:{number}", raw[:-1] if whole else raw, whole)


def _seq_of(line: _Line, chain: str | None) -> int | None:
    try:
        record = json.loads(line.data)
    except ValueError:
        return None
    if not isinstance(record, dict) or (chain is not None and record.get("chain") != chain):
        return None
    seq = record.get("seq")
    return seq if isinstance(seq, int) else None


def _chain_fields_valid(record: dict[str, Any]) -> bool:
    seq, prev, chain = record.get("seq"), record.get("prev"), record.get("chain")
    return (
        isinstance(seq, int)
        and not isinstance(seq, bool)
        and seq >= 0
        and isinstance(prev, str)
        and len(prev) == 64
        and isinstance(chain, str)
    )


class _Verifier:
    def __init__(
        self,
        keys: dict[str, ec.EllipticCurvePublicKey] | None,
        chain: str | None,
        partial: bool,
    ) -> None:
        self.keys = keys
        self.only = chain
        self.chain = chain
        self.records = 0
        self.checkpoints = 0
        self.expected: int | None = None if partial else 0
        self.prev_hash = GENESIS
        self.last_event: str | None = None

    def run(self, lines: Iterator[_Line]) -> Problem | None:
        line = next(lines, None)
        while line is not None:
            following = next(lines, None)
            rest = itertools.chain([] if following is None else [following], lines)
            problem = self._check(line, following, rest)
            if problem is not None:
                return problem
            line = following
        return None

    def index(self) -> int:
        return self.expected if self.expected is not None else 0

    def _check(self, line: _Line, following: _Line | None, rest: Iterator[_Line]) -> Problem | None:
        index = self.index()
        if not line.whole:
            return Problem(index, "truncated", "the last record is incomplete", line.where)
        try:
            record = json.loads(line.data)
        except ValueError:
            return Problem(index, "edited", "the record is not valid JSON", line.where)
        if not isinstance(record, dict):
            return Problem(index, "edited", "the record is not a JSON object", line.where)
        if self.only is not None and record.get("chain") != self.only:
            return None  # another process's chain on a shared stdout (--chain)
        if not is_canonical(record, line.data):
            return Problem(index, "edited", "the record is not in canonical form", line.where)
        if not _chain_fields_valid(record):
            return Problem(index, "edited", "the record has no valid chain fields", line.where)
        seq, prev, chain = record["seq"], record["prev"], record["chain"]
        if self.chain is None:
            self.chain = chain
        if self.expected is None:  # --partial: the first record anchors the chain
            self.expected, self.prev_hash = seq, prev
            index = seq
        if (chain != self.chain or seq != index) and prev == self.prev_hash:
            # It links to the record before it, so it was written here: its own chain or
            # seq was changed (a record moved or brought in links elsewhere).
            return Problem(index, "edited", "the record's chain fields were changed", line.where)
        if chain != self.chain:
            detail = f"the record belongs to chain {chain}, not {self.chain}"
            return Problem(index, "spliced", detail, line.where)
        problem = self._order(seq, prev, index, line, following, rest)
        if problem is not None:
            return problem
        if record.get("event") == CHECKPOINT:
            problem = self._checkpoint(record, index, line.where)
            if problem is not None:
                return problem
            self.checkpoints += 1
        self.prev_hash = digest(line.data)
        self.expected = index + 1
        self.records += 1
        self.last_event = record.get("event")
        return None

    def _linked(self, line: _Line, following: _Line | None, index: int) -> bool:
        """Whether ``following`` is record ``index + 1`` of this chain, linked to ``line``."""
        if following is None:
            return False
        try:
            after = json.loads(following.data)
        except ValueError:
            return False
        return (
            isinstance(after, dict)
            and after.get("chain") == self.chain
            and after.get("seq") == index + 1
            and after.get("prev") == digest(line.data)
        )

    def _order(
        self,
        seq: int,
        prev: str,
        index: int,
        line: _Line,
        following: _Line | None,
        rest: Iterator[_Line],
    ) -> Problem | None:
        if seq > index:
            if any(_seq_of(later, self.only) == index for later in rest):
                detail = f"seq {seq} stands where seq {index} belongs"
                return Problem(index, "reordered", detail, line.where)
            what = f"record {index}" if seq == index + 1 else f"records {index} to {seq - 1}"
            return Problem(index, "missing", f"{what} missing (next is seq {seq})", line.where)
        if seq < index:
            return Problem(index, "reordered", f"seq {seq} comes after seq {index - 1}", line.where)
        if prev == self.prev_hash:
            return None
        if index == 0:
            return Problem(0, "missing", "the chain does not start at its genesis", line.where)
        if following is not None and not self._linked(line, following, index):
            # Record index - 1 is as it was, or the next record would still link to this
            # one: this record's own prev was changed (which changed its hash too).
            return Problem(index, "edited", "the record's prev was changed", line.where)
        detail = f"record {index - 1} does not hash to the prev of record {index}"
        return Problem(index - 1, "edited", detail, line.where)

    def _checkpoint(self, record: dict[str, Any], index: int, where: str) -> Problem | None:
        if record.get("count") != index or record.get("last_hash") != self.prev_hash:
            detail = (
                f"count {record.get('count')!r} / last_hash do not match the"
                f" {index} records before it"
            )
            return Problem(index, "checkpoint mismatch", detail, where)
        if self.keys is None:
            return None
        key = self.keys.get(str(record.get("kid")))
        if key is None:
            return Problem(index, "bad signature", "signed by no key given (kid)", where)
        if not signature_valid(record, key):
            return Problem(
                index, "bad signature", "the checkpoint signature does not verify", where
            )
        return None


def verify(
    files: list[Path],
    *,
    keys: dict[str, ec.EllipticCurvePublicKey] | None = None,
    expect_at_least: int | None = None,
    closed: bool = False,
    chain: str | None = None,
    partial: bool = False,
) -> Report:
    """Verify the log made of ``files`` (in chain order). ``keys``: checkpoint public keys
    by kid (None: signatures are not checked). ``chain``: verify only that chain (stdout
    captures). ``partial``: the first record anchors the chain (older files pruned)."""
    verifier = _Verifier(keys, chain, partial)
    problem = verifier.run(_lines(files)) or end_problem(
        verifier,
        expect_at_least=expect_at_least,
        closed=closed,
        chain=chain,
        end=files[-1].name if files else "end",
    )
    return Report(verifier.records, verifier.checkpoints, keys is not None, problem)


def end_problem(
    verifier: _Verifier,
    *,
    expect_at_least: int | None,
    closed: bool,
    chain: str | None,
    end: str,
) -> Problem | None:
    """What is wrong with the log as a whole once every record verified: a ``chain`` asked
    for that no record belongs to (missing), fewer records than ``expect_at_least``, or
    (``closed``) a log that does not end with a checkpoint, an empty one included (both
    truncated)."""
    total = verifier.index()
    if chain is not None and not verifier.records:
        return Problem(total, "missing", f"no record of chain {chain}", end)
    if expect_at_least is not None and total < expect_at_least:
        detail = f"{total} records where at least {expect_at_least} were expected"
        return Problem(total, "truncated", detail, end)
    if closed and not verifier.records:
        return Problem(total, "truncated", "the log holds no record (not even a checkpoint)", end)
    if closed and verifier.last_event != CHECKPOINT:
        return Problem(total, "truncated", "the log does not end with a checkpoint", end)
    return None
