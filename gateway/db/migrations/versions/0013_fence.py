"""A lease token on every queue row (copies.lease_token, relays.lease_token): fencing for stalled nodes.

Revision ID: 0013_fence
Revises: 0012_vorgang_last_message
Create Date: 2026-12-07 15:00:00

Every claim of a copy or relayed mail adds one to its row's token and hands the new value out with the
job. Before a node writes to a mailbox or sends to a back office it confirms its lease with a
conditional UPDATE on (id, leased_by, lease_token), and it records the outcome under the same
condition, so a node that stalled past its lease while another took the row over writes and records
nothing (docs/scaling.md). Existing rows start at 0, as new ones do.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_fence"
down_revision: str | Sequence[str] | None = "0012_vorgang_last_message"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("copies", "relays"):
        with op.batch_alter_table(table, schema=None, recreate="never") as batch_op:
            batch_op.add_column(sa.Column("lease_token", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    for table in ("copies", "relays"):
        with op.batch_alter_table(table, schema=None, recreate="never") as batch_op:
            batch_op.drop_column("lease_token")
