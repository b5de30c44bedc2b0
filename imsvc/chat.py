"""The data path of a message: store (commit), answer the sender, fan out, start the AI reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from imsvc import store
from imsvc.bus import Bus
from imsvc.db import Database
from imsvc.errors import Forbidden, NotFound, RateLimited, ValidationFailed
from imsvc.hub import Connection, Event
from imsvc.metrics import Metrics
from imsvc.models import Message
from imsvc.ratelimit import RateLimiter
from imsvc.schemas import (
    AiReplyDeltaFrame,
    FrameId,
    MessageOut,
    MessageSentFrame,
    NewMessageFrame,
    ServerFrame,
    message_out,
)

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
    @property
    def model_name(self) -> str: ...

    def enqueue(self, message: Message, record_id: str) -> bool:
        """Queue a reply whose record (status 0) is committed; False when there is no room (busy)."""
        ...

    async def refuse(self, message: Message, record_id: str) -> None:
        """End a reply that could not be queued, as `busy`."""
        ...


class Chat:
    """Every message goes through here, so that ordering, fan-out and replies hold for REST and WebSocket alike.

    Per session, storing and fanning out happen under one lock: the order in which seqs are
    committed is the order in which every socket receives the messages.
    """

    def __init__(self, db: Database, bus: Bus, limiter: RateLimiter, metrics: Metrics) -> None:
        self.db = db
        self.metrics = metrics
        self.bus = bus
        self.limiter = limiter
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
        wait = self.limiter.take(user_id)
        if wait is not None:
            original = await self._original(user_id, session_id, client_msg_id)
            if original is None:
                raise RateLimited(wait)
        async with self._session_locks.hold(session_id):
            try:
                sent, recipients = await self._store(user_id, session_id, content, client_msg_id)
            except Exception:
                if wait is None:
                    self.limiter.give_back(user_id)
                raise
            if sent.duplicate and wait is None:
                self.limiter.give_back(user_id)  # idempotent repeats do not count
            out = message_out(sent.message)
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
            self.metrics.messages_stored.inc()
            exclude = origin.id if origin else None
            await self.bus.publish(Event(tuple(recipients), text=NewMessageFrame(message=out).wire(), exclude=exclude))
            queued = self._enqueue(sent)
        if sent.ai_record_id is not None and not queued and self.replies is not None:
            await self.replies.refuse(sent.message, sent.ai_record_id)
        return sent

    def _enqueue(self, sent: store.Sent) -> bool:
        """Queue the reply while the session lock is held, so that replies start in seq order."""
        if self.replies is None or sent.ai_record_id is None:
            return False
        return self.replies.enqueue(sent.message, sent.ai_record_id)

    async def _store(
        self, user_id: str, session_id: str, content: str, client_msg_id: str | None
    ) -> tuple[store.Sent, list[str]]:
        try:
            async with self.db.transaction() as s:
                if client_msg_id is not None:
                    original = await store.find_by_client_id(s, session_id, user_id, client_msg_id)
                    if original is not None:
                        return original, []
                appended = await store.append_message(s, session_id, user_id, content, client_msg_id)
                if appended is None:  # the first message creates the session, its sender the owner
                    await store.create_owned(s, session_id, user_id)
                    appended = await store.append_message(s, session_id, user_id, content, client_msg_id)
                    assert appended is not None
                if user_id not in appended.members:
                    raise Forbidden("not a member of this session")  # rolls the seq back
                message, record_id = appended.message, None
                if appended.ai_enabled and self.replies is not None:
                    record_id = await store.create_record(s, session_id, message.message_id, self.replies.model_name)
                return store.Sent(message, duplicate=False, ai_record_id=record_id), list(appended.members)
        except IntegrityError:
            if client_msg_id is None:
                raise
        # A concurrent retry of the same client_msg_id committed first: answer with the original.
        original = await self._original(user_id, session_id, client_msg_id)
        if original is None:
            raise RuntimeError("client_msg_id conflict without an original")
        return original, []

    async def _original(self, user_id: str, session_id: str, client_msg_id: str | None) -> store.Sent | None:
        if client_msg_id is None:
            return None
        async with self.db.reader() as s:
            return await store.find_by_client_id(s, session_id, user_id, client_msg_id)

    async def regenerate(self, user_id: str, message_id: str, bot_user_id: str) -> str:
        """A new reply to a user message, its context ending at that message; the record id."""
        if self.replies is None:
            raise ValidationFailed("this server has no AI assistant")
        async with self.db.reader() as s:
            message = await store.get_message(s, message_id)
            if message is None or await store.member_role(s, message.session_id, user_id) is None:
                raise NotFound("no such message")
            session = await store.get_session(s, message.session_id)
        if message.from_user_id == bot_user_id:
            raise ValidationFailed("regenerate takes a user message, not an AI reply")
        if session is None or not session.ai_enabled:
            raise ValidationFailed("this session has no AI assistant")
        wait = self.limiter.take(user_id)
        if wait is not None:
            raise RateLimited(wait)
        async with self._session_locks.hold(message.session_id):
            async with self.db.transaction() as s:
                record_id = await store.create_record(
                    s, message.session_id, message.message_id, self.replies.model_name
                )
            queued = self.replies.enqueue(message, record_id)
        if not queued:
            await self.replies.refuse(message, record_id)
        return record_id

    async def conclude_reply(
        self,
        session_id: str,
        record_id: str,
        author: str,
        text: str,
        record: dict[str, Any],
        frame: Callable[[MessageOut | None], ServerFrame],
    ) -> ServerFrame:
        """Store a reply's text (when there is any) as the author's message and close its record, in one
        transaction and in the session's order; then send `frame(message)` to every member."""
        async with self._session_locks.hold(session_id):
            async with self.db.transaction() as s:
                message = None
                if text:
                    appended = await store.append_message(s, session_id, author, text)
                    assert appended is not None, "a session with a reply running is never deleted"
                    message, recipients = appended.message, list(appended.members)
                else:
                    recipients = await store.member_ids(s, session_id)
                await store.update_record(
                    s,
                    record_id,
                    response_content=text or None,
                    ai_message_id=message.message_id if message else None,
                    **record,
                )
            if message is not None:
                self.metrics.messages_stored.inc()
            final = frame(message_out(message) if message else None)
            await self.bus.publish(Event(tuple(recipients), text=final.wire()))
        return final

    async def publish(self, recipients: tuple[str, ...], frame: ServerFrame) -> None:
        if isinstance(frame, AiReplyDeltaFrame):
            await self.bus.publish(Event(recipients, delta=frame))
        else:
            await self.bus.publish(Event(recipients, text=frame.wire()))

    async def history_after(self, user_id: str, session_id: str, after_seq: int) -> tuple[list[Message], bool]:
        async with self.db.reader() as s:
            await store.require_member(s, session_id, user_id)
            return await store.after_seq(s, session_id, after_seq, SYNC_LIMIT)
