"""The node table: every gateway process sharing the database, with its heartbeat (issue 17, item 3).

Revision ID: 0014_nodes
Revises: 0013_fence
Create Date: 2026-12-07 15:00:00

A row per ``gateway.node_name``: written at start, its heartbeat_at renewed every few seconds, marked
stopped on a clean stop or stale when another node took its leases over. `gateway nodes` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_nodes"
down_revision: str | Sequence[str] | None = "0013_fence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_ids", sa.String(length=1000), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("key_files", sa.Text(), nullable=False),
        sa.Column("maildir_marker", sa.String(length=64), nullable=True),
        sa.Column("taken_over_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_nodes")),
    )


def downgrade() -> None:
    op.drop_table("nodes")
