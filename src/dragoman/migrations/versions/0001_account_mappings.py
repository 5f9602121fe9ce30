"""The account mapping entity.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_mappings",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("cloud_account", sa.String(512), nullable=False),
        sa.Column("cloud_account_index", sa.String(64), nullable=True),
        sa.Column("payment_customer", sa.String(512), nullable=True),
        sa.Column("payment_customer_ciphertext", sa.LargeBinary, nullable=True),
        sa.Column("payment_customer_index", sa.String(64), nullable=True),
        sa.Column("data_key_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(512), nullable=False),
        sa.Column("verification_method", sa.String(64), nullable=False),
        sa.Column("verification_evidence", sa.Text, nullable=True),
        sa.Column("last_validated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(512), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("grants", sa.JSON, nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'stale', 'revoked')",
            name="ck_account_mappings_status",
        ),
        sa.UniqueConstraint("cloud_account", name="uq_account_mappings_cloud_account"),
        sa.UniqueConstraint("cloud_account_index", name="uq_account_mappings_cloud_account_index"),
    )
    op.create_index(
        "ix_account_mappings_payment_customer_index",
        "account_mappings",
        ["payment_customer_index"],
    )


def downgrade() -> None:
    op.drop_index("ix_account_mappings_payment_customer_index", "account_mappings")
    op.drop_table("account_mappings")
