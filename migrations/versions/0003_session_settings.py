"""Running a session (SPEC §11): who the assistant answers, with which persona and model.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Sessions stored before this revision keep today's behaviour: the assistant answers every message
(`always`) with the server's default system prompt and model (nulls).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as table:
        table.add_column(sa.Column("ai_trigger", sa.String(16), nullable=False, server_default="always"))
        table.add_column(sa.Column("ai_system_prompt", sa.Text(), nullable=True))
        table.add_column(sa.Column("ai_model", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as table:
        for column in ("ai_model", "ai_system_prompt", "ai_trigger"):
            table.drop_column(column)
