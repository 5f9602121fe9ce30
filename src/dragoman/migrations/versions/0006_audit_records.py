"""The audit trail's table: a copy of the chained audit log, shipped from the file spool.

One row per record: ``line`` is the record's exact canonical line, so ``hash`` is
sha256(line) and a verifier recomputes the whole chain from the table alone
(docs/audit.md). On PostgreSQL the table is append-only for everyone, the owner included:
a trigger refuses UPDATE, DELETE and TRUNCATE. The proxy's own role should in addition hold
only INSERT and SELECT on it (the grants are the operator's, docs/audit.md), so that even a
role that could drop the trigger cannot change a row. SQLite gets the table only: anybody
who can write its file can rewrite it, so a trigger there would promise nothing.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE FUNCTION audit_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_records is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("chain", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("prev", sa.CHAR(64), nullable=False),
        sa.Column("hash", sa.CHAR(64), nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("chain", "seq", name="pk_audit_records"),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    op.execute(
        "CREATE TRIGGER audit_records_no_update_delete BEFORE UPDATE OR DELETE ON audit_records"
        " FOR EACH ROW EXECUTE FUNCTION audit_records_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only()"
    )
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_records_no_truncate ON audit_records")
        op.execute("DROP TRIGGER audit_records_no_update_delete ON audit_records")
        op.execute("DROP FUNCTION audit_records_append_only()")
    op.drop_table("audit_records")
