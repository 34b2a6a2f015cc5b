"""Lease polls to one worker at a time, so several processes can share one database.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

- `jobs.poll_worker`: the worker that claimed the job's current poll. While it polls,
  `next_poll_at` is its lease (moved ahead by the claim, renewed while the request runs), so no
  other process asks the provider about the job at the same moment.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("poll_worker", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("poll_worker")
