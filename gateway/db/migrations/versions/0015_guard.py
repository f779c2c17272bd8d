"""The collision guard: release settings, copies' delivery time, held replies (issue 18, part 1).

Revision ID: 0015_guard
Revises: 0014_nodes
Create Date: 2026-12-07 18:10:00

Releases get ``collision_guard`` (NULL: the default for their sharing), ``hold_timeout`` and
``after_hold_timeout``; copies ``delivered_at``, set by the fan-out when it records a copy written
(copies delivered before stay NULL: the guard takes their creation instead); and ``held_replies``.
Plain server defaults, so SQLite adds the columns in place (no table rebuild).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_guard"
down_revision: str | Sequence[str] | None = "0014_nodes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("releases", sa.Column("collision_guard", sa.String(length=10), nullable=True))
    op.add_column("releases", sa.Column("hold_timeout", sa.Integer(), nullable=False, server_default="86400"))
    op.add_column(
        "releases",
        sa.Column("after_hold_timeout", sa.String(length=10), nullable=False, server_default="release"),
    )
    op.add_column("copies", sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "held_replies",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("portfolio_id", sa.BigInteger(), nullable=False),
        sa.Column("held_id", sa.String(length=40), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("answers_message_id", sa.BigInteger(), nullable=False),
        sa.Column("collides_with_message_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("release_name", sa.String(length=200), nullable=False),
        sa.Column("after_hold_timeout", sa.String(length=10), nullable=False),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("to_addresses", sa.JSON(), nullable=False),
        sa.Column("cc_addresses", sa.JSON(), nullable=False),
        sa.Column("notice_written_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notice_next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notice_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("notice_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id", "portfolio_id"],
            ["messages.id", "messages.portfolio_id"],
            name=op.f("fk_held_replies_message_id_portfolio_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_held_replies")),
        sa.UniqueConstraint("held_id", name=op.f("uq_held_replies_held_id")),
    )
    op.create_index(op.f("ix_held_replies_portfolio_id"), "held_replies", ["portfolio_id"])
    op.create_index("ix_held_replies_state", "held_replies", ["state", "due_at"])
    op.create_index("ix_held_replies_notice", "held_replies", ["notice_written_at", "notice_next_at"])


def downgrade() -> None:
    op.drop_index("ix_held_replies_notice", table_name="held_replies")
    op.drop_index("ix_held_replies_state", table_name="held_replies")
    op.drop_index(op.f("ix_held_replies_portfolio_id"), table_name="held_replies")
    op.drop_table("held_replies")
    # recreate="never": SQLite drops columns in place; a table rebuild would cascade its references.
    with op.batch_alter_table("copies", recreate="never") as batch:
        batch.drop_column("delivered_at")
    with op.batch_alter_table("releases", recreate="never") as batch:
        batch.drop_column("after_hold_timeout")
        batch.drop_column("hold_timeout")
        batch.drop_column("collision_guard")
