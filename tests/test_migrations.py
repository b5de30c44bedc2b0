"""The migrations build the schema, and tear it down, on both databases."""

from __future__ import annotations

import asyncio

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from imsvc.db import downgrade, migrate

TABLES = {"sessions", "session_members", "messages", "ai_chat_records"}


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
