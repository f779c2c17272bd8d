"""messages.trace: how each message arrived (HELO, client address, protocol, id, time), for its Received line.

Revision ID: 0009_content_trace
Revises: 0008_queue
Create Date: 2026-12-07 05:00:00

Copies are written and replies relayed after the SMTP session has ended; the Received line each of them
carries (RFC 5321 4.4, ``gateway.domain.trace``) is written from what is stored here. Messages stored
before have none and get no Received line of ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_content_trace"
down_revision: str | Sequence[str] | None = "0008_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# recreate="never": SQLite adds and drops the plain column in place (see 0006).


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("trace", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("trace")
