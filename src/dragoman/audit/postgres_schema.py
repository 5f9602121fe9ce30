"""The ``audit_records`` table (created by migration 0006) as the shipper and the verifier
see it, and the advisory lock that lets one shipper at a time ship a chain.

The table is declared on its own MetaData, not on the state store's: the store never
creates or reads it, and the migration (not ``create_all``) is what defines it.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

audit_metadata = sa.MetaData()

audit_records = sa.Table(
    "audit_records",
    audit_metadata,
    sa.Column("chain", sa.Text, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("prev", sa.CHAR(64), nullable=False),
    sa.Column("hash", sa.CHAR(64), nullable=False),
    sa.Column("line", sa.Text, nullable=False),
    sa.Column("time", sa.DateTime(timezone=True), nullable=True),
)


def lock_key(chain: str) -> int:
    """The pg advisory lock of a chain: a signed 64-bit number, the same in every process
    (Python's ``hash`` is salted per process, so it cannot serve)."""
    raw = hashlib.sha256(b"dragoman.audit.ship:" + chain.encode("utf-8")).digest()[:8]
    return int.from_bytes(raw, "big", signed=True)
