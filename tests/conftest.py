"""Fixtures: a migrated database per backend per run, and a real uvicorn serving imsvc on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from imsvc.db import migrate
from tests.helpers import LiveServer, start_server

BACKENDS = ["sqlite", "postgresql"]


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """A new, empty database of `backend`; dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'imsvc.db'}"
        return
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        pytest.skip("TEST_DATABASE_URL is not set")
    name = f"imsvc_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database per backend for the whole run, built by running the migrations."""
    for url in fresh_database(request.param, tmp_path_factory.mktemp(request.param)):
        migrate(url)
        yield url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables, for migration tests."""
    yield from fresh_database(request.param, tmp_path)


ServerFactory = Callable[..., Awaitable[LiveServer]]


@pytest_asyncio.fixture
async def make_server(database_url: str) -> AsyncIterator[ServerFactory]:
    """Start servers with settings overrides; all are stopped at the end of the test."""
    stack: list[Any] = []

    async def factory(**overrides: Any) -> LiveServer:
        context = start_server(overrides.pop("database_url", database_url), **overrides)
        server = await context.__aenter__()
        stack.append(context)
        return server

    yield factory
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


@pytest_asyncio.fixture
async def server(make_server: ServerFactory) -> LiveServer:
    return await make_server()
