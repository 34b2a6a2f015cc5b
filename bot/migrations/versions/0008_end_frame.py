"""Keep a job's end frame (for models that take a last frame) until the provider has it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Like `image_data`, `end_image_data` is the fitted JPEG kept only until the submit is confirmed,
so a restart can resubmit the job exactly as asked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("end_image_data", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("end_image_data")
