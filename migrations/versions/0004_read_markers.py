"""Read markers (SPEC §12): how far each member has read.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Members stored before this revision have read nothing (0).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("session_members") as table:
        table.add_column(sa.Column("last_read_seq", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("session_members") as table:
        table.drop_column("last_read_seq")
