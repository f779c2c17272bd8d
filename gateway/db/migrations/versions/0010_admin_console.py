"""admin_accounts, admin_account_portfolios, admin_sessions: who may log in to the web console.

Revision ID: 0010_admin_console
Revises: 0009_content_trace
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_admin_console"
down_revision: str | Sequence[str] | None = "0009_content_trace"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "admin_accounts",
        sa.Column("id", BigId, nullable=False),
        sa.Column("login", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=True),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_accounts")),
        sa.UniqueConstraint("login", name=op.f("uq_admin_accounts_login")),
    )
    op.create_table(
        "admin_account_portfolios",
        sa.Column("account_id", BigId, nullable=False),
        sa.Column("portfolio_id", BigId, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["admin_accounts.id"],
            name=op.f("fk_admin_account_portfolios_account_id_admin_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_admin_account_portfolios_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "portfolio_id", name=op.f("pk_admin_account_portfolios")),
    )
    op.create_index(
        op.f("ix_admin_account_portfolios_portfolio_id"),
        "admin_account_portfolios",
        ["portfolio_id"],
        unique=False,
    )
    op.create_table(
        "admin_sessions",
        sa.Column("id", BigId, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", BigId, nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["admin_accounts.id"],
            name=op.f("fk_admin_sessions_account_id_admin_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_sessions_token_hash")),
    )
    op.create_index(op.f("ix_admin_sessions_account_id"), "admin_sessions", ["account_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_admin_sessions_account_id"), table_name="admin_sessions")
    op.drop_table("admin_sessions")
    op.drop_index(op.f("ix_admin_account_portfolios_portfolio_id"), table_name="admin_account_portfolios")
    op.drop_table("admin_account_portfolios")
    op.drop_table("admin_accounts")
