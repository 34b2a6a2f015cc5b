"""The languages a job speaks: the requester's (private words, DMs) and the public one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

Both are catalogue names from bot/i18n.py ("de", "pt_BR", …), recorded when the job is asked for,
so messages posted later (status, result, failure, DM) are rendered for their readers. Empty for
jobs from before translations: English.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("member_language", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("public_language", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("public_language")
        batch.drop_column("member_language")
