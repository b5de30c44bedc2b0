"""ORM tables (SPEC §2). The migrations in migrations/versions are the source of the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out; SQLite keeps no offset, so it is restored on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class RecordStatus(IntEnum):
    """`ai_chat_records.status` (SPEC §2)."""

    PROCESSING = 0
    SUCCESS = 1
    FAILED = 2
    CANCELLED = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ChatSession(Base):
    __tablename__ = "sessions"

    session_id: Mapped[str] = mapped_column(String(48), primary_key=True)
    title: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(48))
    ai_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    ai_trigger: Mapped[str] = mapped_column(String(16), default="always", server_default="always")
    ai_system_prompt: Mapped[str | None] = mapped_column(Text)
    ai_model: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SessionMember(Base):
    __tablename__ = "session_members"
    __table_args__ = (Index("ix_session_members_user_id", "user_id"),)

    session_id: Mapped[str] = mapped_column(
        String(48), ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(48), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_read_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("session_id", "seq"),
        UniqueConstraint("session_id", "from_user_id", "client_msg_id"),
        Index("ix_messages_session_type_seq", "session_id", "msg_type", "seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    session_id: Mapped[str] = mapped_column(String(48), ForeignKey("sessions.session_id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    from_user_id: Mapped[str] = mapped_column(String(48))
    msg_type: Mapped[str] = mapped_column(String(16), default="TEXT")
    msg_content: Mapped[str] = mapped_column(Text)
    client_msg_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # SPEC §10: a change row names its target; the target is folded (edited, deleted, reacted to).
    target_message_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reactions: Mapped[dict[str, list[str]] | None] = mapped_column(JSON)  # emoji → user ids, in order


class AIChatRecord(Base):
    __tablename__ = "ai_chat_records"
    __table_args__ = (
        Index("ix_ai_chat_records_session_id", "session_id"),
        Index("ix_ai_chat_records_status", "status"),
    )

    record_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(48), ForeignKey("sessions.session_id", ondelete="CASCADE"))
    user_message_id: Mapped[str] = mapped_column(String(64))
    ai_message_id: Mapped[str | None] = mapped_column(String(64))
    request_content: Mapped[str] = mapped_column(Text)
    response_content: Mapped[str | None] = mapped_column(Text)
    status: Mapped[int] = mapped_column(SmallInteger, default=0)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(100))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    first_token_ms: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(64))  # the process that runs it (BUS=postgres)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Replica(Base):
    """A process sharing the database (BUS=postgres), and when it last said it was alive."""

    __tablename__ = "replicas"

    process_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Online(Base):
    """A process holding at least one socket of a user (BUS=postgres; SPEC §12 presence)."""

    __tablename__ = "presence"
    __table_args__ = (Index("ix_presence_user_id", "user_id"),)

    process_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(48), primary_key=True)
