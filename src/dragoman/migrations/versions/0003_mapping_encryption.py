"""Mappings sealed at rest: data keys, sealed fields, one live link per account,
reconciliation checkpoints.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account_mappings") as batch:
        batch.drop_constraint("uq_account_mappings_cloud_account", type_="unique")
        batch.drop_constraint("uq_account_mappings_cloud_account_index", type_="unique")
        batch.alter_column("cloud_account", existing_type=sa.String(512), nullable=True)
        batch.alter_column(
            "data_key_id", new_column_name="data_key_kek", existing_type=sa.String(64)
        )
        batch.add_column(sa.Column("cloud_account_ciphertext", sa.LargeBinary, nullable=True))
        batch.add_column(sa.Column("data_key_wrapped", sa.LargeBinary, nullable=True))
        batch.add_column(
            sa.Column("verification_evidence_ciphertext", sa.LargeBinary, nullable=True)
        )
        batch.add_column(sa.Column("last_reconciled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_reconcile_run", sa.String(36), nullable=True))
    op.create_index(
        "uq_account_mappings_live_account",
        "account_mappings",
        ["cloud_account_index"],
        unique=True,
        sqlite_where=sa.text("status != 'revoked'"),
        postgresql_where=sa.text("status != 'revoked'"),
    )


def downgrade() -> None:
    op.drop_index("uq_account_mappings_live_account", "account_mappings")
    with op.batch_alter_table("account_mappings") as batch:
        batch.drop_column("last_reconcile_run")
        batch.drop_column("last_reconciled_at")
        batch.drop_column("verification_evidence_ciphertext")
        batch.drop_column("data_key_wrapped")
        batch.drop_column("cloud_account_ciphertext")
        batch.alter_column(
            "data_key_kek", new_column_name="data_key_id", existing_type=sa.String(64)
        )
        batch.create_unique_constraint(
            "uq_account_mappings_cloud_account_index", ["cloud_account_index"]
        )
        batch.create_unique_constraint("uq_account_mappings_cloud_account", ["cloud_account"])
