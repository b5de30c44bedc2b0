"""Replicas sharing one PostgreSQL (SPEC §7): heartbeats, and ending the replies of a process that died.

Each process writes its heartbeat every REPLICA_HEARTBEAT_S over the connection pool (not the LISTEN
link, so a cut link does not make a live process look dead). A process whose heartbeat is older than
REPLICA_TIMEOUT_S is dead: any survivor ends its running replies as `interrupted` and tells their
members. A live process's replies are never ended by another; one that could not write its own
heartbeat for REPLICA_TIMEOUT_S ends its replies itself, so that no reply is concluded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert

from imsvc import store
from imsvc.bus import Bus
from imsvc.db import Database
from imsvc.errors import Interrupted
from imsvc.events import Event, Presence
from imsvc.logs import get_logger
from imsvc.models import AIChatRecord, Online, RecordStatus, Replica, utcnow
from imsvc.replies import ReplyScheduler
from imsvc.schemas import AiReplyErrorFrame, ErrorDetail
from imsvc.settings import Settings

log = get_logger(__name__)


class Replicas:
    def __init__(self, settings: Settings, db: Database, bus: Bus, replies: ReplyScheduler, process_id: str) -> None:
        self._settings = settings
        self._db = db
        self._bus = bus
        self._replies = replies
        self.process_id = process_id
        self._task: asyncio.Task[None] | None = None
        self._last_beat = time.monotonic()

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # the loop keeps trying; /ready reports the database
            await self._beat()
        self._task = asyncio.create_task(self._run(), name="replicas")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            async with self._db.transaction() as s:
                await s.execute(delete(Replica).where(Replica.process_id == self.process_id))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.replica_heartbeat_s)
            try:
                await self._beat()
                await self.end_dead()
            except Exception as exc:
                log.warning("could not write the heartbeat", error=type(exc).__name__)
                if time.monotonic() - self._last_beat > self._settings.replica_timeout_s:
                    # Others may count this process as dead by now: end its own replies before they do.
                    await self._replies.interrupt_all()

    async def _beat(self) -> None:
        async with self._db.transaction() as s:
            now = utcnow()
            await s.execute(
                insert(Replica)
                .values(process_id=self.process_id, heartbeat_at=now)
                .on_conflict_do_update(index_elements=["process_id"], set_={"heartbeat_at": now})
            )
        self._last_beat = time.monotonic()

    async def end_dead(self) -> int:
        """End the running replies of every process whose heartbeat is too old (or that never had one)."""
        deadline = utcnow() - timedelta(seconds=self._settings.replica_timeout_s)
        async with self._db.transaction() as s:
            alive = select(Replica.process_id).where(Replica.heartbeat_at >= deadline)
            ended = (
                await s.execute(
                    update(AIChatRecord)
                    .where(
                        AIChatRecord.status == int(RecordStatus.PROCESSING),
                        (AIChatRecord.owner.is_(None)) | (AIChatRecord.owner.not_in(alive)),
                    )
                    .values(
                        status=int(RecordStatus.FAILED),
                        finish_reason=Interrupted.code,
                        error_message=f"{Interrupted.code}: the process running the reply stopped",
                        updated_at=utcnow(),
                    )
                    .returning(AIChatRecord.record_id, AIChatRecord.session_id, AIChatRecord.user_message_id)
                )
            ).all()
            gone = set(
                (
                    await s.execute(delete(Online).where(Online.process_id.not_in(alive)).returning(Online.user_id))
                ).scalars()
            )
            still = set((await s.scalars(select(Online.user_id).where(Online.user_id.in_(gone)))).all())
            offline = {user: await store.session_ids_of(s, user) for user in gone - still}
            await s.execute(delete(Replica).where(Replica.heartbeat_at < deadline))
        for user_id, sessions in offline.items():  # their sockets went with the process
            self._bus.publish(Presence(user_id, False, tuple(sessions)))
        error = ErrorDetail(code=Interrupted.code, message="the process running the reply stopped")
        for record_id, session_id, user_message_id in ended:
            frame = AiReplyErrorFrame(
                record_id=record_id, session_id=session_id, user_message_id=user_message_id, error=error, message=None
            )
            self._bus.publish(Event(session_id, frame))
        if ended:
            log.warning("replies of a stopped process ended", count=len(ended))
        return len(ended)
