"""Add a small key/value table for state that must survive restarts.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

First use: the fingerprint of the globally synced slash commands, so a restart does not
re-sync (Discord rate-limits global syncs).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
