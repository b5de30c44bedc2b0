"""The data path of a message: store (commit), answer the sender, fan out, start the AI reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from sqlalchemy.exc import IntegrityError

from imsvc import store
from imsvc.bus import Bus
from imsvc.db import Database
from imsvc.hub import Connection, Event
from imsvc.models import Message
from imsvc.schemas import FrameId, MessageOut, MessageSentFrame, NewMessageFrame

SYNC_LIMIT = 200


class KeyedLock:
    """An asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class ReplyStarter(Protocol):
    async def start(self, message: Message) -> str | None:
        """Start an AI reply to a stored user message; the record id, or None when the session has no AI."""
        ...


class Chat:
    """Sending goes through one place so that ordering, fan-out and replies hold for REST and WebSocket alike.

    Per session, storing and fanning out happen under one lock: the order in which seqs are
    committed is the order in which every socket receives the messages.
    """

    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus
        self.replies: ReplyStarter | None = None
        self._session_locks = KeyedLock()

    async def send(
        self,
        user_id: str,
        session_id: str,
        content: str,
        client_msg_id: str | None = None,
        origin: Connection | None = None,
        ref: FrameId | None = None,
    ) -> store.Sent:
        async with self._session_locks.hold(session_id):
            sent, recipients = await self._store(user_id, session_id, content, client_msg_id)
            out = MessageOut.model_validate(sent.message, from_attributes=True)
            if origin is not None:
                origin.send(
                    MessageSentFrame(
                        ref=ref,
                        message_id=out.message_id,
                        content=out.msg_content,
                        message=out,
                        client_msg_id=out.client_msg_id,
                        duplicate=sent.duplicate,
                    )
                )
            if sent.duplicate:
                return sent
            await self.bus.publish(
                Event(
                    tuple(recipients), text=NewMessageFrame(message=out).wire(), exclude=origin.id if origin else None
                )
            )
        if self.replies is None:
            return sent
        record_id = await self.replies.start(sent.message)
        return store.Sent(sent.message, duplicate=False, ai_record_id=record_id)

    async def _store(
        self, user_id: str, session_id: str, content: str, client_msg_id: str | None
    ) -> tuple[store.Sent, list[str]]:
        try:
            async with self.db.transaction() as s:
                if client_msg_id is not None:
                    original = await store.find_by_client_id(s, session_id, user_id, client_msg_id)
                    if original is not None:
                        return original, []
                await store.join_or_create(s, session_id, user_id)
                message = await store.append_message(s, session_id, user_id, content, client_msg_id)
                return store.Sent(message, duplicate=False), await store.member_ids(s, session_id)
        except IntegrityError:
            if client_msg_id is None:
                raise
        # A concurrent retry of the same client_msg_id committed first: answer with the original.
        async with self.db.reader() as s:
            original = await store.find_by_client_id(s, session_id, user_id, client_msg_id)
        if original is None:
            raise RuntimeError("client_msg_id conflict without an original")
        return original, []

    async def history_after(self, user_id: str, session_id: str, after_seq: int) -> tuple[list[Message], bool]:
        async with self.db.reader() as s:
            await store.require_member(s, session_id, user_id)
            return await store.after_seq(s, session_id, after_seq, SYNC_LIMIT)
