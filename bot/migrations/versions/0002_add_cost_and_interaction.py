"""Record what a job cost and which interaction started it.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Both columns are nullable: rows written before this revision simply have no value, and the
provider does not always report a cost.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cost_usd", sa.Double(), nullable=True))
    # A Discord snowflake: needs 64 bits.
    op.add_column("jobs", sa.Column("interaction_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite before 3.35 cannot drop a column in place.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("interaction_id")
        batch.drop_column("cost_usd")
