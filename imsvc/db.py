"""Engine and sessionmaker; one AsyncSession per unit of work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def ensure_sqlite_directory(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str) -> AsyncEngine:
    # hide_parameters: errors name the statement, never the message content bound to it.
    if make_url(url).get_backend_name() == "sqlite":
        ensure_sqlite_directory(url)
        engine = create_async_engine(url, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it is a round trip per checkout. A connection the database dropped fails its first
    # statement (503 not_ready), and that disconnect invalidates every older connection of the pool.
    # No JIT: its compile time (hundreds of ms) dwarfs the short indexed queries of a chat service,
    # and the planner's cost estimates for per-session subqueries would trigger it.
    return create_async_engine(
        url, pool_size=10, max_overflow=20, hide_parameters=True, connect_args={"server_settings": {"jit": "off"}}
    )


class Database:
    """The engine, its sessionmaker, and a transaction() helper.

    SQLite allows one writer at a time and fails (rather than waits) when a reader upgrades to a
    writer, so writes are serialised in-process there; PostgreSQL takes row locks instead.
    """

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        # Reads run in autocommit: no BEGIN and ROLLBACK round trips around a history page.
        self._reads = async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._writers: list[AsyncConnection] = []  # the sequencer's, idle between batches

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        if self._write_lock is None:
            async with self.sessionmaker() as session, session.begin():
                yield session
            return
        async with self._write_lock, self.sessionmaker() as session, session.begin():
            yield session

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection of the sequencer's, kept from one batch to the next (no checkout and no ping
        per batch: two round trips fewer on the hot path). The caller commits; anything left uncommitted
        is rolled back, and after an error the connection is given up and a later batch takes a new one."""
        async with self._write_lock or contextlib.nullcontext():
            conn = self._writers.pop() if self._writers else await self.engine.connect()
            try:
                yield conn
                if conn.in_transaction():
                    await conn.rollback()
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.close()  # a connection the database dropped is invalidated, not pooled
                raise
            self._writers.append(conn)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only: each statement sees what is committed when it runs."""
        async with self._reads() as session:
            yield session

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection for history pages (store.history), without a session's bookkeeping. No isolation level
        is set on it and reset after: on PostgreSQL the page is read through asyncpg itself, outside any
        transaction, and on SQLite a SELECT begins none."""
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        while self._writers:
            with contextlib.suppress(Exception):
                await self._writers.pop().close()
        await self.engine.dispose()


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Any:
    """Alembic's config pointing at the migrations beside the package, whatever the working directory."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """`alembic upgrade` (blocking: runs its own event loop, so call it outside one or in a thread)."""
    from alembic import command

    ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
