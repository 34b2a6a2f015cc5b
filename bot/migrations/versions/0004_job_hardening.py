"""Columns that keep paid work safe: who holds a submit, when it went out, honest waiting time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- `submit_worker`: the worker holding the submit lease (next_poll_at is its expiry), so a worker
  can re-check right before the request goes out that the job is still its own.
- `submit_sent_at`: when a submit request last left; while set and no provider id is known, the
  job may already exist at the provider and is not resubmitted lightly (see bot/service.py).
- `last_checked_at`, `waited_seconds`: the time counted against JOB_TIMEOUT_SECONDS, which
  excludes time the bot itself was down or backlogged.
- `delivery_note`: what happened when posting (thread gone, posted elsewhere), for the status.
- `delivery_target`: where results go when the usual place is gone: NULL (the thread or the
  channel), "channel" (the thread was deleted: its parent channel), "dm" (the requester's DMs).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("submit_worker", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("submit_sent_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "jobs", sa.Column("waited_seconds", sa.Double(), nullable=False, server_default="0")
    )
    op.add_column("jobs", sa.Column("delivery_note", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("delivery_target", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("delivery_target")
        batch.drop_column("delivery_note")
        batch.drop_column("waited_seconds")
        batch.drop_column("last_checked_at")
        batch.drop_column("submit_sent_at")
        batch.drop_column("submit_worker")
