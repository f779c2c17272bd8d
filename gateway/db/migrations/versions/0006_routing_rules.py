"""Routing rules: one Vorgang per rule-derived key and portfolio, the header changes rules make on
copies, and the quarantine of messages a rule holds for an admin.

Revision ID: 0006_routing_rules
Revises: 0005_reconcile
Create Date: 2026-11-27 07:25:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_routing_rules"
down_revision: str | Sequence[str] | None = "0005_reconcile"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# recreate="never": SQLite adds and drops the plain column in place; a batch rebuild of messages would
# DROP TABLE it, and with foreign keys on that cascade-deletes participants and copies.


def upgrade() -> None:
    # No Vorgang had a key before rules existed, so the unique index cannot meet duplicates.
    op.drop_index("ix_vorgaenge_key", table_name="vorgaenge")
    op.create_index("uq_vorgaenge_key", "vorgaenge", ["portfolio_id", "key"], unique=True)

    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("copy_headers", sa.JSON(), nullable=True))

    op.create_table(
        "quarantine",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("portfolio_id", sa.BigInteger(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rule_set", sa.String(length=40), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id", "portfolio_id"],
            ["messages.id", "messages.portfolio_id"],
            name=op.f("fk_quarantine_message_id_portfolio_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_quarantine")),
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_quarantine_portfolio_id"), ["portfolio_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quarantine_portfolio_id"))
    op.drop_table("quarantine")

    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("copy_headers")

    op.drop_index("uq_vorgaenge_key", table_name="vorgaenge")
    op.create_index("ix_vorgaenge_key", "vorgaenge", ["portfolio_id", "key"], unique=False)
