"""User actions, for REST and WebSocket alike: check, count against the rate limit, hand to the sequencer,
start the replies that a stored message asks for."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from imsvc import store
from imsvc.batch import (
    Added,
    AddMember,
    Change,
    Changed,
    Configure,
    Configured,
    Marked,
    MarkRead,
    Removed,
    RemoveMember,
    ReplySettings,
    Send,
    Stored,
)
from imsvc.bus import Bus
from imsvc.changes import Kind
from imsvc.db import Database
from imsvc.errors import Forbidden, NotFound, RateLimited, ValidationFailed
from imsvc.events import Event
from imsvc.hub import Connection, Hub
from imsvc.mention import mention_pattern, mentions
from imsvc.models import ChatSession, RecordStatus
from imsvc.ratelimit import RateLimiter
from imsvc.replies import ReplyScheduler
from imsvc.schemas import FrameId, ReadMarkerFrame, TypingNotice, message_out, sent_frame
from imsvc.sequencer import Sequencer
from imsvc.settings import Settings

SYNC_LIMIT = 200
TYPING_INTERVAL_S = 2.0

T = TypeVar("T")


class TypingThrottle:
    """When each user last had an `active: true` forwarded, per session (SPEC §12: one per 2 s)."""

    def __init__(self, interval_s: float = TYPING_INTERVAL_S) -> None:
        self._interval = interval_s
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, user_id: str, session_id: str) -> bool:
        now = time.monotonic()
        if len(self._last) > 10_000:  # forget what no longer throttles anything
            self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
        last = self._last.get((user_id, session_id))
        if last is not None and now - last < self._interval:
            return False
        self._last[(user_id, session_id)] = now
        return True


class Chat:
    def __init__(
        self, settings: Settings, db: Database, bus: Bus, hub: Hub, sequencer: Sequencer, replies: ReplyScheduler
    ) -> None:
        self._db = db
        self._hub = hub
        self._typing = TypingThrottle()
        self._mention = mention_pattern(settings.ai_bot_user_id, settings.ai_bot_mention)
        self._models = settings.ai_model_list
        self._bus = bus
        self._sequencer = sequencer
        self._replies = replies
        self._limiter = RateLimiter(settings.rate_limit_messages, settings.rate_limit_window_s)
        self._bot_user_id = settings.ai_bot_user_id

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
            mentioned = mentions(self._mention, content)
            defaults = self._replies.defaults
            op = Send(session_id, user_id, content, client_msg_id, defaults, mentioned, origin_id, ref)
            try:
                stored = await self._sequencer.send(op)
            except Exception:
                self._limiter.give_back(user_id)
                raise
            if stored.duplicate:
                self._limiter.give_back(user_id)  # idempotent repeats do not count
        if not stored.duplicate:
            if stored.record_id is not None and stored.reply is not None:
                await self._replies.start(stored.record_id, stored.message, stored.reply)
            return stored
        if origin is not None:
            origin.send(sent_frame(stored.message, ref, duplicate=True))
        if (
            stored.record_id is not None
            and stored.record_status is RecordStatus.PROCESSING
            and not self._replies.is_running(stored.record_id)
        ):
            # Its first attempt stored it but never heard so (a lost commit answer): the reply starts now.
            await self._replies.start(stored.record_id, stored.message, await self._reply_settings(session_id))
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
        self._take(user_id)
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
        self._take(actor)
        added = await self._counted(actor, self._sequencer.add_member(AddMember(session_id, actor, user_id)))
        if not added.created:
            self._limiter.give_back(actor)
        return added

    async def remove_member(self, actor: str, session_id: str, user_id: str) -> Removed:
        """The owner removes a member, or a member leaves (SPEC §11)."""
        self._take(actor)
        return await self._counted(actor, self._sequencer.remove_member(RemoveMember(session_id, actor, user_id)))

    async def configure(self, actor: str, session_id: str, values: dict[str, Any]) -> Configured:
        """The owner changes title and assistant settings; one SETTINGS event with what changed."""
        model = values.get("ai_model")
        allowed = self._models
        if model is not None and allowed and model not in allowed:
            raise ValidationFailed(f"ai_model must be one of: {', '.join(allowed)}")
        self._take(actor)
        op = Configure(session_id, actor, tuple(values.items()))
        configured = await self._counted(actor, self._sequencer.configure(op))
        if not configured.changed:
            self._limiter.give_back(actor)
        return configured

    async def read(
        self, user_id: str, session_id: str, seq: int, origin: Connection | None = None, ref: FrameId | None = None
    ) -> Marked:
        """Move the user's read marker forward (SPEC §12); every member's sockets hear of it when it moves."""
        origin_id = origin.id if origin is not None else None
        marked = await self._sequencer.mark_read(MarkRead(session_id, user_id, seq, origin_id, ref))
        if not marked.moved and origin is not None:
            origin.send(
                ReadMarkerFrame(ref=ref, session_id=session_id, user_id=user_id, last_read_seq=marked.last_read_seq)
            )
        return marked

    def typing(self, conn: Connection, session_id: str, active: bool) -> None:
        """Tell the other members' sockets; never stored. At most one `active` per user and session per 2 s."""
        if not self._hub.member(conn.user_id, session_id):
            raise Forbidden("not a member of this session")
        if active and not self._typing.allow(conn.user_id, session_id):
            return
        notice = TypingNotice(session_id=session_id, user_id=conn.user_id, active=active)
        self._bus.publish(Event(session_id, notice, skip_user=conn.user_id))

    def _take(self, user_id: str) -> None:
        wait = self._limiter.take(user_id)
        if wait is not None:
            raise RateLimited(wait)

    async def _counted(self, user_id: str, stored: Awaitable[T]) -> T:
        """Await a stored event; its rate-limit place is given back if storing it failed."""
        try:
            return await stored
        except Exception:
            self._limiter.give_back(user_id)
            raise

    async def _reply_settings(self, session_id: str) -> ReplySettings:
        """The session's model and system prompt now, or the server's."""
        defaults = self._replies.defaults
        async with self._db.reader() as s:
            session = await store.get_session(s, session_id)
        if session is None:
            return defaults
        return ReplySettings(session.ai_model or defaults.model, session.ai_system_prompt or defaults.system_prompt)

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
        self._take(user_id)
        reply = await self._reply_settings(message.session_id)
        async with self._db.transaction() as s:
            record_id = await store.create_record(
                s, message.session_id, message.message_id, reply.model, self._sequencer.owner
            )
        await self._replies.start(record_id, message_out(message), reply)
        return record_id

    async def sessions_of(self, user_id: str) -> list[str]:
        async with self._db.reader() as s:
            return await store.session_ids_of(s, user_id)

    async def history_after(self, user_id: str, session_id: str, after_seq: int) -> store.History:
        async with self._db.read_connection() as conn:
            return await store.history(conn, session_id, user_id, after_seq, newest_first=False, limit=SYNC_LIMIT)
