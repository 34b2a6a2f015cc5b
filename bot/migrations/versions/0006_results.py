"""Keep each job's picture for the result buttons, and link extended clips into chains.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

- `job_images`: the fitted first frame of every job (and, for Extend, the source of the next),
  kept IMAGE_RETENTION_DAYS so Again / Edit prompt work for days; a periodic cleanup removes
  older rows. A table of its own, so the hot job queries never carry picture bytes.
- `jobs.parent_job_id`: the job this one extends (its last frame is this one's first);
  `jobs.chain_length`: how many clips the chain has up to this one (1 for a plain job).
- `jobs.joined_message_id`: the message with the chain's clips joined into one video.
- `jobs.cancelled_by`: who pressed Cancel.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "job_images",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("image_data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_job_images_created_at", "job_images", ["created_at"])
    op.add_column("jobs", sa.Column("parent_job_id", sa.BigInteger(), nullable=True))
    op.add_column(
        "jobs", sa.Column("chain_length", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column("jobs", sa.Column("joined_message_id", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("cancelled_by", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cancelled_by")
        batch.drop_column("joined_message_id")
        batch.drop_column("chain_length")
        batch.drop_column("parent_job_id")
    op.drop_index("ix_job_images_created_at", table_name="job_images")
    op.drop_table("job_images")
