"""The migrations build the schema, and tear it down, on both databases."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from imsvc.db import downgrade, migrate

TABLES = {"sessions", "session_members", "messages", "ai_chat_records", "replicas", "presence"}


async def tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    return names - {"alembic_version"}


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    url = empty_database_url
    migrate(url)
    assert asyncio.run(tables(url)) == TABLES
    downgrade(url, "base")
    assert asyncio.run(tables(url)) == set()
    migrate(url)
    assert asyncio.run(tables(url)) == TABLES


def test_schema_constraints(empty_database_url: str) -> None:
    url = empty_database_url
    migrate(url)

    async def constraints() -> tuple[list[set[str]], list[str]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:

                def read(sync):  # type: ignore[no-untyped-def]
                    insp = inspect(sync)
                    uniques = [set(u["column_names"]) for u in insp.get_unique_constraints("messages")]
                    return uniques, insp.get_pk_constraint("session_members")["constrained_columns"]

                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    uniques, member_pk = asyncio.run(constraints())
    assert {"session_id", "seq"} in uniques
    assert {"session_id", "from_user_id", "client_msg_id"} in uniques
    assert set(member_pk) == {"session_id", "user_id"}


def test_the_event_log_migration_keeps_stored_messages(empty_database_url: str) -> None:
    from sqlalchemy import text

    from imsvc import store
    from imsvc.db import Database

    url = empty_database_url
    migrate(url, "0001")

    async def seed() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                now = datetime(2026, 11, 30, 12, tzinfo=UTC if conn.dialect.name == "postgresql" else None)
                await conn.execute(
                    text(
                        "INSERT INTO sessions (session_id, created_by, ai_enabled, last_seq, created_at, updated_at)"
                        " VALUES ('old', 'alice', false, 1, :now, :now)"
                    ),
                    {"now": now},
                )
                await conn.execute(
                    text(
                        "INSERT INTO session_members (session_id, user_id, role, joined_at)"
                        " VALUES ('old', 'alice', 'owner', :now)"
                    ),
                    {"now": now},
                )
                await conn.execute(
                    text(
                        "INSERT INTO messages (message_id, session_id, seq, from_user_id, msg_type, msg_content,"
                        " created_at, updated_at)"
                        " VALUES ('msg_old', 'old', 1, 'alice', 'TEXT', 'from before', :now, :now)"
                    ),
                    {"now": now},
                )
        finally:
            await engine.dispose()

    async def read() -> tuple[list[dict[str, object]], bool]:
        db = Database(url)
        try:
            async with db.read_connection() as conn:
                found = await store.history(conn, "old", "alice", 10, newest_first=True, limit=10, text_only=True)
        finally:
            await db.dispose()
        return [{k: v for k, v in m.items() if k not in ("id", "created_at")} for m in found.messages], found.has_more

    asyncio.run(seed())
    migrate(url)
    rows, more = asyncio.run(read())
    assert not more and rows == [
        {
            "message_id": "msg_old",
            "session_id": "old",
            "seq": 1,
            "from_user_id": "alice",
            "msg_type": "TEXT",
            "msg_content": "from before",
            "client_msg_id": None,
            "target_message_id": None,
            "data": None,
            "edited_at": None,
            "deleted": False,
            "reactions": {},
        }
    ]
    downgrade(url, "0001")  # and back: the message is still there without the new columns
    migrate(url)
    assert asyncio.run(read())[0] == rows
