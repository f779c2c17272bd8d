"""Notices about late copies travel in the relay queue: relays get a purpose, unique per message.

Revision ID: 0008_queue
Revises: 0007_messages_by_portfolio
Create Date: 2026-12-07 05:10:00

A message had at most one relay row (a member's reply, or the read notification of a back office's
mail). The back office now also gets a delay notice and a failure notice about its message's copies
(RFC 3464, gateway.stages.notices), each once: the row's ``purpose`` says which, and (message_id, purpose) is
unique instead of message_id.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_queue"
down_revision: str | Sequence[str] | None = "0007_messages_by_portfolio"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("relays", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purpose", sa.String(length=20), server_default="mail", nullable=False))
        batch_op.drop_constraint("uq_relays_message_id", type_="unique")
        batch_op.create_unique_constraint("uq_relays_message_id_purpose", ["message_id", "purpose"])
    # Copies held before this version waited for an admin (next_attempt_at NULL); now a held copy
    # is probed by itself, and these are due at once.
    op.execute("UPDATE copies SET next_attempt_at = CURRENT_TIMESTAMP WHERE state = 'held'")


def downgrade() -> None:
    op.execute("DELETE FROM relays WHERE purpose <> 'mail'")
    with op.batch_alter_table("relays", schema=None) as batch_op:
        batch_op.drop_constraint("uq_relays_message_id_purpose", type_="unique")
        batch_op.create_unique_constraint("uq_relays_message_id", ["message_id"])
        batch_op.drop_column("purpose")
