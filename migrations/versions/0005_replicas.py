"""Several replicas on one PostgreSQL (SPEC §7, §12): who is alive, which process runs each reply, and
which processes hold a socket of each user.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Records stored before this revision have no owner: start-up recovery treats them as a dead
process's.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("process_id", sa.String(64), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("process_id", name="pk_replicas"),
    )
    op.create_table(
        "presence",
        sa.Column("process_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(48), nullable=False),
        sa.PrimaryKeyConstraint("process_id", "user_id", name="pk_presence"),
    )
    op.create_index("ix_presence_user_id", "presence", ["user_id"])
    with op.batch_alter_table("ai_chat_records") as table:
        table.add_column(sa.Column("owner", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_index("ix_presence_user_id", table_name="presence")
    op.drop_table("presence")
    with op.batch_alter_table("ai_chat_records") as table:
        table.drop_column("owner")
    op.drop_table("replicas")
