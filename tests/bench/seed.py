"""The bench database: created fresh, migrated, seeded in SQL, dropped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from imsvc.db import migrate

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


async def connect(url: str) -> Any:
    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )


@contextlib.asynccontextmanager
async def bench_database(base_url: str) -> AsyncIterator[str]:
    """A new database `imsvc_bench_<random>` beside `base_url`'s, migrated; its URL. Dropped after."""
    name = f"imsvc_bench_{uuid.uuid4().hex[:10]}"
    admin = await connect(base_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        admin = await connect(base_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def seed_history(url: str, session_id: str, reader: str, count: int) -> None:
    """A session of `count` messages, seq 1..count, one a second up to now, `reader` its owner."""
    conn = await connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO sessions (session_id, title, created_by, ai_enabled, last_seq, created_at, updated_at)"
                " VALUES ($1, 'bench history', $2, false, $3, now(), now())",
                session_id,
                reader,
                count,
            )
            await conn.execute(
                "INSERT INTO session_members (session_id, user_id, role, joined_at) VALUES ($1, $2, 'owner', now())",
                session_id,
                reader,
            )
            await conn.execute(
                "INSERT INTO messages (message_id, session_id, seq, from_user_id, msg_type, msg_content,"
                " client_msg_id, created_at, updated_at)"
                " SELECT 'msg_bench_' || $1 || '_' || n, $1, n, $2, 'TEXT', 'history message number ' || n, NULL,"
                " now() - make_interval(secs => $3 - n), now() - make_interval(secs => $3 - n)"
                " FROM generate_series(1, $3::bigint) AS n",
                session_id,
                reader,
                count,
            )
        # As autovacuum would soon after a bulk load: the planner sees the table's real size.
        await conn.execute("ANALYZE sessions, session_members, messages")
    finally:
        await conn.close()
