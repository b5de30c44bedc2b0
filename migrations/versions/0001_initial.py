"""Sessions, members, messages with per-session seq, AI chat records.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def timestamp(name: str) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(48), nullable=False),
        sa.Column("title", sa.String(200), nullable=True),
        sa.Column("created_by", sa.String(48), nullable=False),
        sa.Column("ai_enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("last_seq", sa.BigInteger(), nullable=False, server_default="0"),
        timestamp("created_at"),
        timestamp("updated_at"),
        sa.PrimaryKeyConstraint("session_id", name="pk_sessions"),
    )
    op.create_table(
        "session_members",
        sa.Column("session_id", sa.String(48), nullable=False),
        sa.Column("user_id", sa.String(48), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        timestamp("joined_at"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.session_id"], name="fk_session_members_session_id_sessions", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("session_id", "user_id", name="pk_session_members"),
    )
    op.create_index("ix_session_members_user_id", "session_members", ["user_id"])
    op.create_table(
        "messages",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(48), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("from_user_id", sa.String(48), nullable=False),
        sa.Column("msg_type", sa.String(16), nullable=False),
        sa.Column("msg_content", sa.Text(), nullable=False),
        sa.Column("client_msg_id", sa.String(64), nullable=True),
        timestamp("created_at"),
        timestamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.session_id"], name="fk_messages_session_id_sessions", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("message_id", name="uq_messages_message_id"),
        sa.UniqueConstraint("session_id", "seq", name="uq_messages_session_id_seq"),
        sa.UniqueConstraint(
            "session_id", "from_user_id", "client_msg_id", name="uq_messages_session_id_from_user_id_client_msg_id"
        ),
    )
    op.create_table(
        "ai_chat_records",
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(48), nullable=False),
        sa.Column("user_message_id", sa.String(64), nullable=False),
        sa.Column("ai_message_id", sa.String(64), nullable=True),
        sa.Column("request_content", sa.Text(), nullable=False),
        sa.Column("response_content", sa.Text(), nullable=True),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("model", sa.String(100), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("first_token_ms", sa.Integer(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        timestamp("created_at"),
        timestamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.session_id"], name="fk_ai_chat_records_session_id_sessions", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("record_id", name="pk_ai_chat_records"),
    )
    op.create_index("ix_ai_chat_records_session_id", "ai_chat_records", ["session_id"])
    op.create_index("ix_ai_chat_records_status", "ai_chat_records", ["status"])


def downgrade() -> None:
    op.drop_table("ai_chat_records")
    op.drop_table("messages")
    op.drop_table("session_members")
    op.drop_table("sessions")
