"""An index on messages (portfolio_id, id): reconciliation reads a portfolio's messages in id order.

Revision ID: 0007_messages_by_portfolio
Revises: 0006_routing_rules
Create Date: 2026-11-27 08:05:00

Without it, ``WHERE portfolio_id = ? AND id > ? ORDER BY id LIMIT n`` read every message of the
portfolio and sorted them for each batch (SQLite chose the (portfolio_id, sha256) index), so a run over
100,000 messages did 200 full scans.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_messages_by_portfolio"
down_revision: str | Sequence[str] | None = "0006_routing_rules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.create_index("ix_messages_portfolio_id", ["portfolio_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_messages_portfolio_id")
