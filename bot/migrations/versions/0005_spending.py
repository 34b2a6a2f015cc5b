"""Spend control: the money ledger and each server's own settings.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

- `ledger`: every reservation, settlement and release of money (bot/spending.py). Amounts are
  whole micro-dollars so sums are exact on every backend; `spent_at` is the reservation's time,
  which the day and month sums use. The unique `reservation_id` lets a reservation be closed
  (settled or released) only once.
- `guild_settings`, `role_limits`, `guild_access`: what a server's admins chose
  (bot/guild_settings.py); NULL means "the bot's default".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        # SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reservation_id", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("requester_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("amount_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("spent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.UniqueConstraint("reservation_id", name="uq_ledger_reservation_id"),
    )
    # The sums: the whole bot this month, one member, one server; and a job's reservation.
    # Each holds the amount too, so a sum reads the index alone.
    op.create_index("ix_ledger_spent_at", "ledger", ["spent_at", "amount_micro_usd"])
    op.create_index(
        "ix_ledger_requester_id_spent_at",
        "ledger",
        ["requester_id", "spent_at", "amount_micro_usd"],
    )
    op.create_index(
        "ix_ledger_guild_id_spent_at", "ledger", ["guild_id", "spent_at", "amount_micro_usd"]
    )
    op.create_index("ix_ledger_job_id", "ledger", ["job_id"])

    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("member_daily_usd", sa.Double(), nullable=True),
        sa.Column("member_monthly_usd", sa.Double(), nullable=True),
        sa.Column("guild_monthly_usd", sa.Double(), nullable=True),
        sa.Column("confirm_above_usd", sa.Double(), nullable=True),
        sa.Column("max_active", sa.Integer(), nullable=True),
        sa.Column("cooldown_seconds", sa.Integer(), nullable=True),
        sa.Column("default_model", sa.Text(), nullable=True),
        sa.Column("default_resolution", sa.Text(), nullable=True),
        sa.Column("default_duration", sa.Integer(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("log_channel_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "role_limits",
        sa.Column("guild_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("role_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("member_daily_usd", sa.Double(), nullable=True),
        sa.Column("member_monthly_usd", sa.Double(), nullable=True),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "guild_access",
        sa.Column("guild_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("target_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    )


def downgrade() -> None:
    op.drop_table("guild_access")
    op.drop_table("role_limits")
    op.drop_table("guild_settings")
    op.drop_index("ix_ledger_job_id", table_name="ledger")
    op.drop_index("ix_ledger_guild_id_spent_at", table_name="ledger")
    op.drop_index("ix_ledger_requester_id_spent_at", table_name="ledger")
    op.drop_index("ix_ledger_spent_at", table_name="ledger")
    op.drop_table("ledger")
