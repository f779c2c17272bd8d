"""Indexes for the web console's first pages: events (portfolio_id, id), messages (vorgang_id, received_at).

Revision ID: 0011_console_indexes
Revises: 0010_admin_console
Create Date: 2026-12-07 13:15:00

A portfolio's event log is read newest first (``ORDER BY id DESC LIMIT n``); with only (portfolio_id,
at) both databases read every event of the portfolio and sorted them (258 ms at 100,000 messages on
SQLite). The Vorgänge list orders by each Vorgang's last message; with (vorgang_id, received_at) that is
one index probe per Vorgang instead of grouping every message of the portfolio.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011_console_indexes"
down_revision: str | Sequence[str] | None = "0010_admin_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None, recreate="never") as batch_op:
        batch_op.create_index("ix_events_portfolio_id", ["portfolio_id", "id"], unique=False)
    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.create_index("ix_messages_vorgang_received", ["vorgang_id", "received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_messages_vorgang_received")
    with op.batch_alter_table("events", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_events_portfolio_id")
