"""The hash chain that makes the audit trail tamper-evident (docs/audit.md).

Every record carries three chain fields: ``chain`` (the id of the chain, fixed by its first
record), ``seq`` (its index in the chain, from 0) and ``prev`` (the hex SHA-256 of the
previous record's line; :data:`GENESIS` for the first record). A record's line is its
*canonical encoding*: JSON with sorted keys, separators ``,`` and ``:``, non-ASCII kept as
UTF-8, no trailing newline. The line written is exactly that encoding (plus ``\\n``), so a
third party verifies by hashing the bytes of each line, with no JSON re-encoding at all.

The encoding is orjson's (about a tenth of the cost of the standard library's). Lines
written before were the standard library's; the two differ only in floats under 1e-4
(``1e-05`` against ``1e-5``) and in NaN and infinities, so :func:`is_canonical` accepts
either, and old files still verify.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "0" * 64
"""``prev`` of the first record of a chain."""

CHAIN_FIELDS = ("chain", "seq", "prev")


class ChainError(OSError):
    """The tail of the chain cannot be read, so no record can be linked to it.

    An OSError on purpose: the audit trail treats it like a failed write and refuses
    requests until an operator looks (fail closed), rather than starting a new chain that
    would hide whatever happened to the old one."""


# JSON's own types only: what orjson would encode beyond them (dataclasses, datetimes,
# subclasses such as enums) goes to the standard library, which encodes or refuses it as
# it always did.
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def canonical(record: dict[str, Any]) -> bytes:
    """The canonical encoding of ``record``: the bytes that are written and hashed."""
    try:
        return orjson.dumps(record, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:  # integers past 64 bits, keys that are not strings...
        return stdlib_canonical(record)


def stdlib_canonical(record: dict[str, Any]) -> bytes:
    """The canonical encoding as the standard library's ``json`` writes it (every line
    before orjson, and what orjson cannot encode)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def is_canonical(record: dict[str, Any], line: bytes) -> bool:
    """Whether ``line`` is the canonical encoding of ``record`` (it was parsed from it)."""
    return line == canonical(record) or line == stdlib_canonical(record)


def digest(line: bytes) -> str:
    """Hex SHA-256 of a line (without its newline): the ``prev`` of the next record."""
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True, slots=True)
class Tail:
    """Where the chain ends: what the next record links to."""

    chain: str
    next_seq: int
    last_hash: str
    last_event: str | None = None
    """The event of the last record (a chain that ends with a checkpoint needs no other)."""

    @classmethod
    def genesis(cls, chain: str | None = None) -> Tail:
        return cls(chain or uuid.uuid4().hex, 0, GENESIS)

    @classmethod
    def after(cls, line: bytes) -> Tail:
        """The tail after ``line`` (a chained record, without its newline)."""
        try:
            record = json.loads(line)
            chain, seq = record["chain"], record["seq"]
        except (ValueError, TypeError, KeyError) as exc:
            raise ChainError(f"the last audit record is not a chained record ({exc})") from None
        if not isinstance(chain, str) or not isinstance(seq, int) or isinstance(seq, bool):
            raise ChainError("the last audit record has no valid chain or seq")
        event = record.get("event")
        return cls(chain, seq + 1, digest(line), event if isinstance(event, str) else None)


def link(record: dict[str, Any], tail: Tail) -> tuple[bytes, Tail]:
    """``record`` chained after ``tail``: its line (canonical, newline included) and the
    new tail. ``record`` must not carry chain fields of its own."""
    chained = {**record, "chain": tail.chain, "seq": tail.next_seq, "prev": tail.last_hash}
    line = canonical(chained)
    event = record.get("event")
    after = Tail(
        tail.chain, tail.next_seq + 1, digest(line), event if isinstance(event, str) else None
    )
    return line + b"\n", after
