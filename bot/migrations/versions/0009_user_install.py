"""Jobs answered through the interaction (user installs where the bot cannot post itself).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

`interaction_token` is a credential: it is cleared once the job is done (or the token expired).
`interaction_expires_at` is when Discord stops accepting it (15 minutes after the command);
`origin_guild_id` is the server a user-install job came from when the bot is not a member there
(`guild_id` stays empty so only member and bot limits apply).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("interaction_token", sa.Text(), nullable=True))
    op.add_column(
        "jobs", sa.Column("interaction_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("jobs", sa.Column("origin_guild_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("origin_guild_id")
        batch.drop_column("interaction_expires_at")
        batch.drop_column("interaction_token")
