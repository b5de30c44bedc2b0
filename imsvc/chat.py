"""User actions, for REST and WebSocket alike: check, count against the rate limit, hand to the sequencer,
start the replies that a stored message asks for."""

from __future__ import annotations

from imsvc import store
from imsvc.batch import Added, AddMember, Change, Changed, Send, Stored
from imsvc.bus import Bus
from imsvc.changes import Kind
from imsvc.db import Database
from imsvc.errors import NotFound, RateLimited, ValidationFailed
from imsvc.events import Event
from imsvc.hub import Connection
from imsvc.models import ChatSession, RecordStatus
from imsvc.ratelimit import RateLimiter
from imsvc.replies import ReplyScheduler
from imsvc.schemas import FrameId, MessageOut, message_out, sent_frame
from imsvc.sequencer import Sequencer

SYNC_LIMIT = 200


class Chat:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        sequencer: Sequencer,
        replies: ReplyScheduler,
        limiter: RateLimiter,
        bot_user_id: str,
    ) -> None:
        self._db = db
        self._bus = bus
        self._sequencer = sequencer
        self._replies = replies
        self._limiter = limiter
        self._bot_user_id = bot_user_id

    async def send(
        self,
        user_id: str,
        session_id: str,
        content: str,
        client_msg_id: str | None = None,
        origin: Connection | None = None,
        ref: FrameId | None = None,
    ) -> Stored:
        """Store a message; the sending socket (`origin`) is answered `message_sent` in the session's order."""
        wait = self._limiter.take(user_id)
        if wait is not None:
            original = await self._original(user_id, session_id, client_msg_id)
            if original is None:
                raise RateLimited(wait)
            stored = original
        else:
            origin_id = origin.id if origin is not None else None
            op = Send(session_id, user_id, content, client_msg_id, self._replies.model_name, origin_id, ref)
            try:
                stored = await self._sequencer.send(op)
            except Exception:
                self._limiter.give_back(user_id)
                raise
            if stored.duplicate:
                self._limiter.give_back(user_id)  # idempotent repeats do not count
        if not stored.duplicate:
            if stored.record_id is not None:
                await self._replies.start(stored.record_id, stored.message)
            return stored
        if origin is not None:
            origin.send(sent_frame(stored.message, ref, duplicate=True))
        if (
            stored.record_id is not None
            and stored.record_status is RecordStatus.PROCESSING
            and not self._replies.is_running(stored.record_id)
        ):
            # Its first attempt stored it but never heard so (a lost commit answer): the reply starts now.
            await self._replies.start(stored.record_id, stored.message)
        return stored

    async def change(
        self,
        user_id: str,
        kind: Kind,
        message_id: str,
        value: str = "",
        client_msg_id: str | None = None,
        origin: Connection | None = None,
        ref: FrameId | None = None,
    ) -> Changed:
        """Edit, delete, react or unreact (SPEC §10); the sending socket gets `message_sent`."""
        async with self._db.reader() as s:
            target = await store.get_message(s, message_id)
            if target is None or await store.member_role(s, target.session_id, user_id) is None:
                raise NotFound("no such message")
        wait = self._limiter.take(user_id)
        if wait is not None:
            raise RateLimited(wait)
        origin_id = origin.id if origin is not None else None
        op = Change(kind, target.session_id, user_id, message_id, value, client_msg_id, origin_id, ref)
        try:
            changed = await self._sequencer.change(op)
        except Exception:
            self._limiter.give_back(user_id)
            raise
        if changed.event is None or changed.duplicate:
            self._limiter.give_back(user_id)  # nothing new was stored
            if origin is not None:
                origin.send(sent_frame(changed.event or changed.target, ref, duplicate=True))
        return changed

    async def _original(self, user_id: str, session_id: str, client_msg_id: str | None) -> Stored | None:
        if client_msg_id is None:
            return None
        return await self._sequencer.original(session_id, user_id, client_msg_id)

    async def create_session(
        self, creator: str, session_id: str | None, title: str | None, members: list[str], ai_enabled: bool
    ) -> ChatSession:
        async with self._db.transaction() as s:
            session = await store.create_session(s, creator, session_id, title, members, ai_enabled)
        # Nobody can send to it before this answer: its first event reaches every member it lists.
        self._bus.publish(Event(session.session_id, joined=tuple(dict.fromkeys([creator, *members]))))
        return session

    async def add_member(self, actor: str, session_id: str, user_id: str) -> Added:
        return await self._sequencer.add_member(AddMember(session_id, actor, user_id))

    async def regenerate(self, user_id: str, message_id: str) -> str:
        """A new reply to a user message, its context ending at that message; the record id."""
        async with self._db.reader() as s:
            message = await store.get_message(s, message_id)
            if message is None or await store.member_role(s, message.session_id, user_id) is None:
                raise NotFound("no such message")
            session = await store.get_session(s, message.session_id)
        if message.from_user_id == self._bot_user_id:
            raise ValidationFailed("regenerate takes a user message, not an AI reply")
        if session is None or not session.ai_enabled:
            raise ValidationFailed("this session has no AI assistant")
        wait = self._limiter.take(user_id)
        if wait is not None:
            raise RateLimited(wait)
        async with self._db.transaction() as s:
            record_id = await store.create_record(s, message.session_id, message.message_id, self._replies.model_name)
        await self._replies.start(record_id, message_out(message))
        return record_id

    async def sessions_of(self, user_id: str) -> list[str]:
        async with self._db.reader() as s:
            return await store.session_ids_of(s, user_id)

    async def history_after(self, user_id: str, session_id: str, after_seq: int) -> tuple[list[MessageOut], bool]:
        async with self._db.reader() as s:
            await store.readable_last_seq(s, session_id, user_id)
            return await store.after_seq(s, session_id, after_seq, SYNC_LIMIT)
