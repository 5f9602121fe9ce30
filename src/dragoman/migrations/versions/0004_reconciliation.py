"""Reconciliation: its runs, its findings (the alert outbox), and the runner lease.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("started_by", sa.String(256), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sessions", sa.Integer, nullable=False),
        sa.Column("active_seconds", sa.Float, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("note", sa.String(512), nullable=True),
    )
    op.create_index("ix_reconcile_runs_started_at", "reconcile_runs", ["started_at"])
    op.create_table(
        "reconcile_findings",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("mapping_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("customer_index", sa.String(64), nullable=True),
        sa.Column("status_before", sa.String(16), nullable=False),
        sa.Column("status_after", sa.String(16), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("known", sa.Boolean, nullable=False),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "mapping_id", name="pk_reconcile_findings"),
    )
    op.create_index(
        "ix_reconcile_findings_mapping", "reconcile_findings", ["mapping_id", "found_at"]
    )
    op.create_table(
        "reconcile_lease",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(256), nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reconcile_lease")
    op.drop_index("ix_reconcile_findings_mapping", "reconcile_findings")
    op.drop_table("reconcile_findings")
    op.drop_index("ix_reconcile_runs_started_at", "reconcile_runs")
    op.drop_table("reconcile_runs")
