"""Tables of the signing key set (and of the local provider's sealed keys).

Times are epoch seconds (double precision): every instance computes key states from the
same numbers, whatever the database does with time zones.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, Integer, LargeBinary, String, Table

from dragoman.state.sql import metadata

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(128), primary_key=True),
    Column("generation", Integer, nullable=False, unique=True),
    Column("alg", String(16), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("ref", String(2048), nullable=False),
    Column("public_jwk", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("activates_at", Float, nullable=False),
    Column("deactivates_at", Float, nullable=True),
    Column("retired_at", Float, nullable=True),
)

local_signing_keys = Table(
    "local_signing_keys",
    metadata,
    Column("ref", String(128), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("public_jwk", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("disabled_at", Float, nullable=True),
)
