"""The id each reconciliation finding's alert is sent under. A discrepancy whose alert a run
could not confirm delivered is raised again by the next run under the same id (the
receiver's Idempotency-Key), where it was a new id per run and a receiver that had the
first got it twice. Rows from before keep a null and their old id,
``reconcile:<run_id>:<mapping_id>``.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("reconcile_findings", sa.Column("alert_id", sa.String(160), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reconcile_findings") as batch:
        batch.drop_column("alert_id")
