"""The signing key set and the local provider's sealed keys.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(128), primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("ref", sa.String(2048), nullable=False),
        sa.Column("public_jwk", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("activates_at", sa.Float, nullable=False),
        sa.Column("deactivates_at", sa.Float, nullable=True),
        sa.Column("retired_at", sa.Float, nullable=True),
        sa.UniqueConstraint("generation", name="uq_signing_keys_generation"),
    )
    op.create_table(
        "local_signing_keys",
        sa.Column("ref", sa.String(128), primary_key=True),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("public_jwk", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("disabled_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("local_signing_keys")
    op.drop_table("signing_keys")
