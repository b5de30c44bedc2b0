"""Who is connected here: sockets per user, the sessions each connected user is in, delivery of events.

Recipients are looked up when an event is delivered: every socket of every connected member of its
session at that moment. Membership follows the events themselves (`joined`, `left`), so a member
added while a reply runs receives the rest of it, and a removed one nothing after their removal.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable

from starlette.websockets import WebSocketDisconnect

from imsvc.events import Event, EventFrame, Presence
from imsvc.logs import get_logger
from imsvc.outbox import Outbox, rendered, reply_frames
from imsvc.schemas import (
    AiReplyDeltaFrame,
    AiReplyErrorFrame,
    AiReplyFrame,
    AiReplySnapshotFrame,
    AiReplyStartFrame,
    PresenceFrame,
    ServerFrame,
)
from imsvc.wsproto import Prepared, Wire

log = get_logger(__name__)

CLOSE_SLOW_CONSUMER = 1008
CLOSE_SHUTDOWN = 1012
CLOSE_TIMEOUT_S = 1.0  # how long a close may wait on a peer that reads nothing
LISTENER_QUEUE = 1000


class Connection:
    """One socket's outgoing side. A frame goes straight to the socket when nothing waits before it and
    the socket takes it; otherwise it waits in a bounded outbox, drained by `run_sender` as the socket
    takes frames again."""

    def __init__(self, wire: Wire, user_id: str, limit: int) -> None:
        self.id = uuid.uuid4().hex
        self.user_id = user_id
        self._wire = wire
        self._outbox = Outbox(limit)
        self._close_code: int | None = None
        self._close_reason = ""
        self._given_up = asyncio.Event()  # a slow consumer: what waits is dropped, the close goes out at once

    @property
    def closing(self) -> bool:
        return self._close_code is not None

    def send(self, frame: ServerFrame | str, prepared: Prepared | None = None) -> None:
        """Write a frame, or queue it behind those waiting (`prepared`: its JSON, when rendered already;
        a `str` is a frame's JSON rendered without a model)."""
        if self.closing:
            return
        model, prepared = (None, Prepared(frame)) if isinstance(frame, str) else (frame, prepared)
        if self._outbox.empty and self._wire.ready:
            self._wire.write(rendered(model, prepared))
            return
        if not self._outbox.put(model, prepared):
            log.warning("slow consumer dropped", user_id=self.user_id, queued=self._outbox.counted)
            self._outbox.clear()
            self._given_up.set()
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str = "") -> None:
        """Ask the sender to close the socket once what is buffered is sent (at once for a slow consumer)."""
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason
            self._outbox.wake()

    async def run_sender(self) -> None:
        """Write what waits whenever the socket takes it; then close the socket as asked."""
        await self._drain()
        try:
            # A peer that reads nothing never takes the close frame either.
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._wire.close(self._close_code or 1006, self._close_reason)
        except TimeoutError:
            self._wire.abort()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._close_code = self._close_code or 1006  # the peer is gone

    async def _drain(self) -> None:
        while True:
            await self._outbox.wait()
            while not self._outbox.empty:
                if not self._wire.ready and not await self._writable():
                    self._outbox.clear()
                    self._close_code = self._close_code or 1006
                    return
                item = self._outbox.pop()
                if item is not None:
                    self._wire.write(item.wire())
            if self._close_code is not None:
                return

    async def _writable(self) -> bool:
        """Until the socket takes frames again; False when it never will (it closed, or it was given up)."""
        waits = [asyncio.ensure_future(self._wire.until_writable()), asyncio.ensure_future(self._given_up.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return self._wire.ready and not self._given_up.is_set()


class Hub:
    """This process's sockets, by user, and the sessions of every connected user."""

    def __init__(self, max_connections: int) -> None:
        self._max = max_connections
        self._count = 0
        self._by_user: dict[str, set[Connection]] = {}
        self._by_id: dict[str, Connection] = {}
        self._sessions_of: dict[str, set[str]] = {}  # connected user → sessions they are in
        self._members_here: dict[str, set[str]] = {}  # session → its connected members
        self._loading: dict[str, int] = {}  # user → session lists being read for them
        self._streams: dict[str, AiReplySnapshotFrame] = {}  # replies streaming, as their deltas told
        self._followers: dict[str, set[Outbox]] = {}  # SSE streams of replies running elsewhere
        self._left_while_loading: dict[str, set[str]] = {}

    @property
    def count(self) -> int:
        return self._count

    def online(self, user_id: str) -> bool:
        return user_id in self._by_user

    def connections(self, user_id: str) -> frozenset[Connection]:
        return frozenset(self._by_user.get(user_id, ()))

    def register(self, conn: Connection) -> bool:
        """Add a socket before its user's sessions are read (`subscribe`): events of sessions it joins
        meanwhile are not missed. False when the process holds WEBSOCKET_MAX_CONNECTIONS already."""
        if self._count >= self._max:
            return False
        self._count += 1
        self._by_id[conn.id] = conn
        self._by_user.setdefault(conn.user_id, set()).add(conn)
        self._sessions_of.setdefault(conn.user_id, set())
        self._loading[conn.user_id] = self._loading.get(conn.user_id, 0) + 1
        return True

    def subscribe(self, conn: Connection, sessions: Iterable[str]) -> None:
        """The sessions read for a registered socket's user (read after `register`)."""
        user_id = conn.user_id
        left = self._left_while_loading.get(user_id, set())
        if conn in self._by_user.get(user_id, ()):
            for session_id in sessions:
                if session_id not in left:
                    self._join(user_id, session_id)
        self._done_loading(user_id)

    def unregister(self, conn: Connection) -> tuple[str, ...] | None:
        """Remove a socket; when it was its user's last one here, the sessions they were in (else None)."""
        conns = self._by_user.get(conn.user_id)
        if conns is None or conn not in conns:
            return None
        conns.discard(conn)
        del self._by_id[conn.id]
        self._count -= 1
        if conns:
            return None
        del self._by_user[conn.user_id]
        sessions = self._sessions_of.pop(conn.user_id, set())
        for session_id in sessions:
            self._drop_member(session_id, conn.user_id)
        return tuple(sessions)

    def sessions(self, user_id: str) -> tuple[str, ...]:
        return tuple(self._sessions_of.get(user_id, ()))

    def member(self, user_id: str, session_id: str) -> bool:
        """Whether a connected user is a member of the session, as far as the events tell."""
        return session_id in self._sessions_of.get(user_id, ())

    def _done_loading(self, user_id: str) -> None:
        remaining = self._loading.get(user_id, 1) - 1
        if remaining > 0:
            self._loading[user_id] = remaining
            return
        self._loading.pop(user_id, None)
        self._left_while_loading.pop(user_id, None)

    def _join(self, user_id: str, session_id: str) -> None:
        sessions = self._sessions_of.get(user_id)
        if sessions is None:
            return  # not connected here
        sessions.add(session_id)
        self._members_here.setdefault(session_id, set()).add(user_id)

    def _leave(self, user_id: str, session_id: str) -> None:
        if user_id in self._loading:
            self._left_while_loading.setdefault(user_id, set()).add(session_id)
        sessions = self._sessions_of.get(user_id)
        if sessions is not None:
            sessions.discard(session_id)
        self._drop_member(session_id, user_id)

    def _drop_member(self, session_id: str, user_id: str) -> None:
        members = self._members_here.get(session_id)
        if members is not None:
            members.discard(user_id)
            if not members:
                del self._members_here[session_id]

    def streams(self, session_id: str) -> list[AiReplySnapshotFrame]:
        """The text so far of the replies streaming in a session, wherever they run (for `sync`)."""
        return [s.model_copy() for s in self._streams.values() if s.session_id == session_id]

    @contextlib.asynccontextmanager
    async def follow(self, record_id: str) -> AsyncIterator[AsyncIterator[ServerFrame] | None]:
        """A reply running on another process, as its frames come by: the text so far, then the rest (or
        None when no frame of it has come by)."""
        stream = self._streams.get(record_id)
        if stream is None:
            yield None
            return
        outbox = Outbox(LISTENER_QUEUE)
        outbox.put(stream.model_copy())
        self._followers.setdefault(record_id, set()).add(outbox)
        try:
            yield reply_frames(outbox)
        finally:
            followers = self._followers.get(record_id, set())
            followers.discard(outbox)
            if not followers:
                self._followers.pop(record_id, None)

    def _follow(self, frame: EventFrame) -> None:
        if isinstance(frame, AiReplyStartFrame):
            self._streams[frame.record_id] = AiReplySnapshotFrame(
                record_id=frame.record_id,
                session_id=frame.session_id,
                user_message_id=frame.user_message_id,
                content="",
            )
        elif isinstance(frame, AiReplyDeltaFrame):
            stream = self._streams.get(frame.record_id)
            if stream is not None and frame.offset == len(stream.content):
                stream.content += frame.delta
        elif isinstance(frame, AiReplyFrame | AiReplyErrorFrame):
            self._streams.pop(frame.record_id, None)
        else:
            return
        for outbox in self._followers.get(frame.record_id, ()):
            outbox.put(frame)

    def deliver(self, event: Event) -> None:
        """The event to every socket of the session's connected members, rendered once."""
        if event.frame is not None:
            self._follow(event.frame)
        for user_id in event.joined:
            self._join(user_id, event.session_id)
        if event.frame is not None:
            origin = self._by_id.get(event.origin) if event.origin is not None else None
            if origin is not None:
                answer = event.answer()
                if answer is not None:
                    origin.send(answer)
            prepared: Prepared | None = None
            for user_id in self._members_here.get(event.session_id, ()):
                if user_id == event.skip_user:
                    continue
                for conn in self._by_user[user_id]:
                    if conn is origin:
                        continue
                    if prepared is None:
                        prepared = Prepared(event.frame.wire())
                    conn.send(event.frame, prepared)
        for user_id in event.left:
            self._leave(user_id, event.session_id)

    def deliver_presence(self, presence: Presence) -> None:
        """Once to every socket of every other connected user who shares one of its sessions."""
        users: set[str] = set()
        for session_id in presence.sessions:
            users |= self._members_here.get(session_id, set())
        users.discard(presence.user_id)
        frame = PresenceFrame(user_id=presence.user_id, online=presence.online)
        prepared = Prepared(frame.wire())
        for user_id in users:
            for conn in self._by_user[user_id]:
                conn.send(frame, prepared)

    def close_all(self, code: int, reason: str) -> None:
        for conns in self._by_user.values():
            for conn in conns:
                conn.close(code, reason)
