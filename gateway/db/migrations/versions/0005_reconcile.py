"""Reconciliation: a release's backfill and revoked_copies policies, the reconcile runs, and the
release a kept copy came through after that release was deleted.

Revision ID: 0005_reconcile
Revises: 0004
Create Date: 2026-11-27 07:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_reconcile"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


# recreate="never": SQLite adds and drops these plain columns in place. A batch rebuild would DROP TABLE
# releases, which with foreign keys on cascade-deletes every membership (see 0004).


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("backfill", sa.String(length=20), server_default="all", nullable=False))
        batch_op.add_column(
            sa.Column("revoked_copies", sa.String(length=10), server_default="remove", nullable=False)
        )

    with op.batch_alter_table("copies", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("kept_from_release_id", sa.BigInteger(), nullable=True))

    op.create_table(
        "reconcile_runs",
        sa.Column("id", BigId, nullable=False),
        sa.Column("portfolio_id", BigId, nullable=False),
        sa.Column("state", sa.String(length=20), server_default="open", nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("restarts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cursor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("processed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("backfilled", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("revoked", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("kept", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("leased_by", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_reconcile_runs_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_runs")),
    )
    with op.batch_alter_table("reconcile_runs", schema=None, recreate="never") as batch_op:
        batch_op.create_index(batch_op.f("ix_reconcile_runs_portfolio_id"), ["portfolio_id"], unique=False)
        batch_op.create_index("ix_reconcile_runs_state", ["state", "lease_until"], unique=False)
        # One open run per portfolio: a further directory change starts the open one over.
        batch_op.create_index(
            "uq_reconcile_runs_open",
            ["portfolio_id"],
            unique=True,
            sqlite_where=sa.text("state = 'open'"),
            postgresql_where=sa.text("state = 'open'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("reconcile_runs", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("uq_reconcile_runs_open")
        batch_op.drop_index("ix_reconcile_runs_state")
        batch_op.drop_index(batch_op.f("ix_reconcile_runs_portfolio_id"))
    op.drop_table("reconcile_runs")

    with op.batch_alter_table("copies", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("kept_from_release_id")

    with op.batch_alter_table("releases", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("revoked_copies")
        batch_op.drop_column("backfill")
