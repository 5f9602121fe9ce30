"""The mapping tables (SQLAlchemy Core). Migrations in dragoman/migrations mirror this.

The customer id is held in ``payment_customer`` for now; the encryption columns
(``payment_customer_ciphertext``, ``payment_customer_index``, ``data_key_id``) and
``cloud_account_index`` are in place for envelope encryption and blind-index lookups.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from dragoman.state.sql import metadata

account_mappings = Table(
    "account_mappings",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("cloud_account", String(512), nullable=False, unique=True),
    Column("cloud_account_index", String(64), nullable=True, unique=True),
    Column("payment_customer", String(512), nullable=True),
    Column("payment_customer_ciphertext", LargeBinary, nullable=True),
    Column("payment_customer_index", String(64), nullable=True, index=True),
    Column("data_key_id", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(512), nullable=False),
    Column("verification_method", String(64), nullable=False),
    Column("verification_evidence", Text, nullable=True),
    Column("last_validated_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(512), nullable=False),
    Column("version", Integer, nullable=False),
    Column("grants", JSON, nullable=False),
    CheckConstraint(
        "status IN ('active', 'suspended', 'stale', 'revoked')", name="ck_account_mappings_status"
    ),
)
