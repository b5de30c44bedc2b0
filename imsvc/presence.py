"""Who is online (SPEC §12): a user with an open socket, on this process or, with BUS=postgres, on any.

`opened` and `closed` are told of a user's first and last socket on this process; they answer whether
that changes the user's presence everywhere (so that `presence` frames go out once, not per process).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from imsvc.db import Database
from imsvc.hub import Hub
from imsvc.models import Online


class Presence(Protocol):
    async def opened(self, user_id: str) -> bool: ...

    async def closed(self, user_id: str) -> bool: ...

    async def online(self, user_ids: Iterable[str]) -> set[str]: ...


class LocalPresence:
    """One process: its hub knows."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def opened(self, user_id: str) -> bool:
        return True

    async def closed(self, user_id: str) -> bool:
        return True

    async def online(self, user_ids: Iterable[str]) -> set[str]:
        return {user_id for user_id in user_ids if self._hub.online(user_id)}


class SharedPresence:
    """Replicas: a row per (process, user) with a socket; a dead process's rows go with its heartbeat."""

    def __init__(self, db: Database, process_id: str) -> None:
        self._db = db
        self._process_id = process_id

    async def opened(self, user_id: str) -> bool:
        async with self._db.transaction() as s:
            await _one_at_a_time(s, user_id)
            await s.execute(
                insert(Online).values(process_id=self._process_id, user_id=user_id).on_conflict_do_nothing()
            )
            return await self._elsewhere(s, user_id) == 0

    async def closed(self, user_id: str) -> bool:
        async with self._db.transaction() as s:
            await _one_at_a_time(s, user_id)
            await s.execute(delete(Online).where(Online.process_id == self._process_id, Online.user_id == user_id))
            return await self._elsewhere(s, user_id) == 0

    async def online(self, user_ids: Iterable[str]) -> set[str]:
        async with self._db.reader() as s:
            found = await s.scalars(select(Online.user_id).where(Online.user_id.in_(list(user_ids))).distinct())
            return set(found)

    async def _elsewhere(self, s: object, user_id: str) -> int:

        assert isinstance(s, AsyncSession)
        count: int = (
            await s.scalar(select(func.count()).where(Online.user_id == user_id, Online.process_id != self._process_id))
            or 0
        )
        return count


async def _one_at_a_time(s: AsyncSession, user_id: str) -> None:
    """Serialise one user's presence changes across processes: two processes closing the user's last
    sockets at once would each still see the other's row, and neither would say offline."""
    await s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:user_id))"), {"user_id": user_id})
