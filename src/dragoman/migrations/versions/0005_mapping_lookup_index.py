"""Lookups by account through an index: every row's account blind index, not only the live
ones. The partial unique index of 0003 (live rows only) cannot serve a lookup that also
looks for revoked history, so without this one each lookup, a miss included, read the whole
table.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_account_mappings_cloud_account_index", "account_mappings", ["cloud_account_index"]
    )


def downgrade() -> None:
    op.drop_index("ix_account_mappings_cloud_account_index", "account_mappings")
