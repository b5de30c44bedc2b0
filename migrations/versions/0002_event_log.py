"""A session is an event log (SPEC §10): change rows point at their target; targets are folded in place.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Rows stored before this revision read as TEXT messages with no edit, no delete and no reactions
(every new column is nullable; `reactions` null reads as {}).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as table:
        table.add_column(sa.Column("target_message_id", sa.String(64), nullable=True))
        table.add_column(sa.Column("data", sa.JSON(), nullable=True))
        table.add_column(sa.Column("edited_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("reactions", sa.JSON(), nullable=True))
    # TEXT-only history pages and unread counts walk a session's rows of one type by seq.
    op.create_index("ix_messages_session_type_seq", "messages", ["session_id", "msg_type", "seq"])


def downgrade() -> None:
    op.drop_index("ix_messages_session_type_seq", table_name="messages")
    with op.batch_alter_table("messages") as table:
        for column in ("reactions", "deleted_at", "edited_at", "data", "target_message_id"):
            table.drop_column(column)
