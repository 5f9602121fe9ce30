"""The mapping tables (SQLAlchemy Core). Migrations in dragoman/migrations mirror this.

No plaintext account or customer id is stored: ``*_ciphertext`` columns hold fields sealed
under the mapping's data key (``data_key_wrapped``, wrapped by the KEK ``data_key_kek``),
and lookups use the blind indexes ``cloud_account_index`` / ``payment_customer_index``
(:mod:`dragoman.mapping.crypto`). The plaintext columns ``cloud_account``,
``payment_customer`` and ``verification_evidence`` of revision 0001 are kept empty (rows
written before 0003 are sealed by ``maintenance.seal_plaintext``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    text,
)

from dragoman.state.sql import metadata

account_mappings = Table(
    "account_mappings",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("cloud_account", String(512), nullable=True),
    Column("cloud_account_index", String(64), nullable=True),
    Column("cloud_account_ciphertext", LargeBinary, nullable=True),
    Column("payment_customer", String(512), nullable=True),
    Column("payment_customer_ciphertext", LargeBinary, nullable=True),
    Column("payment_customer_index", String(64), nullable=True, index=True),
    Column("data_key_wrapped", LargeBinary, nullable=True),
    Column("data_key_kek", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(512), nullable=False),
    Column("verification_method", String(64), nullable=False),
    Column("verification_evidence", Text, nullable=True),
    Column("verification_evidence_ciphertext", LargeBinary, nullable=True),
    Column("last_validated_at", DateTime(timezone=True), nullable=False),
    Column("last_reconciled_at", DateTime(timezone=True), nullable=True),
    Column("last_reconcile_run", String(36), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(512), nullable=False),
    Column("version", Integer, nullable=False),
    Column("grants", JSON, nullable=False),
    CheckConstraint(
        "status IN ('active', 'suspended', 'stale', 'revoked')", name="ck_account_mappings_status"
    ),
    # Lookups by account (live or revoked): without it every lookup reads the whole table.
    Index("ix_account_mappings_cloud_account_index", "cloud_account_index"),
    # One live link per cloud account; revoked links stay as history.
    Index(
        "uq_account_mappings_live_account",
        "cloud_account_index",
        unique=True,
        sqlite_where=text("status != 'revoked'"),
        postgresql_where=text("status != 'revoked'"),
    ),
)
