"""Event delivery between processes: in memory for one process, PostgreSQL LISTEN/NOTIFY for several.

Both take the sequencer's events twice: `notify_in` inside the transaction that stores them, and
`committed` after the commit. The memory bus delivers at `committed`; the PostgreSQL bus sends
them with `pg_notify` in the transaction (so that PostgreSQL delivers them in commit order, and
never one that was rolled back) and delivers each process's own events when they come back on its
LISTEN connection, like everyone else's. Events that are not stored (deltas, typing, presence, read
markers, a cancel for another process) go through `publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from imsvc import store
from imsvc.db import Database
from imsvc.events import (
    Cancel,
    Event,
    Message,
    Presence,
    Reference,
    decode_message,
    encode_message,
    stored_final_frame,
)
from imsvc.hub import Hub
from imsvc.logs import get_logger
from imsvc.schemas import NewMessageFrame, message_out

log = get_logger(__name__)

CHANNEL = "imsvc_events"
RESYNC = 1012  # a socket that may have missed events is closed: the client reconnects and syncs


class Bus(Protocol):
    cancels: asyncio.Queue[Cancel]  # cancels other processes sent for replies that run here

    async def notify_in(self, c: AsyncConnection, events: Sequence[Event]) -> None:
        """Inside the transaction that stores `events`."""
        ...

    def committed(self, event: Event) -> None:
        """After that transaction committed, in seq order."""
        ...

    def publish(self, message: Message) -> None:
        """An event that is not stored, to every process; never blocks, so callers keep their order."""
        ...

    async def flushed(self) -> None:
        """Until everything published so far has left this process."""
        ...


class MemoryBus:
    """One process: an event goes straight to this process's sockets."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.cancels: asyncio.Queue[Cancel] = asyncio.Queue()

    async def notify_in(self, c: AsyncConnection, events: Sequence[Event]) -> None:
        pass

    def committed(self, event: Event) -> None:
        self._hub.deliver(event)

    def publish(self, message: Message) -> None:
        if isinstance(message, Presence):
            self._hub.deliver_presence(message)
        elif isinstance(message, Event):
            self._hub.deliver(message)

    async def flushed(self) -> None:
        pass


class PostgresBus:
    """Every process LISTENs on one channel, over a connection of its own, and delivers in the order the
    notifications arrive. A cut LISTEN link is reconnected with backoff; the sockets of this process are
    then closed (1012), so that their clients reconnect and `sync` what they may have missed."""

    def __init__(self, database_url: str, db: Database, hub: Hub) -> None:
        self._dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._db = db
        self._hub = hub
        self.cancels: asyncio.Queue[Cancel] = asyncio.Queue()
        self._incoming: asyncio.Queue[str] = asyncio.Queue()
        self._outgoing: asyncio.Queue[list[str]] = asyncio.Queue()
        self._listener: Any = None
        self._notifier: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = asyncio.Event()

    async def start(self) -> None:
        await self._listen()
        self._tasks = [
            asyncio.create_task(self._deliver(), name="bus:deliver"),
            asyncio.create_task(self._notify(), name="bus:notify"),
            asyncio.create_task(self._watch(), name="bus:watch"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in (self._listener, self._notifier):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def notify_in(self, c: AsyncConnection, events: Sequence[Event]) -> None:
        payloads = [payload for event in events for payload in encode_message(event)]
        if payloads:
            await c.execute(
                text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS TEXT[])) AS p"),
                {"channel": CHANNEL, "payloads": payloads},
            )

    def committed(self, event: Event) -> None:
        pass  # it comes back on the LISTEN connection

    def publish(self, message: Message) -> None:
        self._outgoing.put_nowait(encode_message(message))

    async def flushed(self) -> None:
        await self._outgoing.join()

    async def _listen(self) -> None:
        import asyncpg

        self._listener = await asyncpg.connect(self._dsn)
        await self._listener.add_listener(CHANNEL, self._received)
        self._listener.add_termination_listener(lambda _conn: self._lost.set())

    def _received(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._incoming.put_nowait(payload)

    async def _watch(self) -> None:
        """Reconnect a lost LISTEN link with backoff; its sockets here may have missed events."""
        while True:
            await self._lost.wait()
            self._lost.clear()
            delay = 0.1
            while True:
                try:
                    await self._listen()
                    break
                except Exception as exc:
                    log.warning("LISTEN link lost; reconnecting", error=type(exc).__name__, retry_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            log.warning("LISTEN link back: closing this process's sockets so that they sync")
            self._hub.close_all(RESYNC, "events may have been missed: reconnect and sync")

    async def _notify(self) -> None:
        """Send what `publish` queued, in order, many payloads per statement."""
        import asyncpg

        while True:
            batch = [await self._outgoing.get()]
            while not self._outgoing.empty():
                batch.append(self._outgoing.get_nowait())
            payloads = [p for payloads in batch for p in payloads]
            delay = 0.1
            while True:
                try:
                    if self._notifier is None or self._notifier.is_closed():
                        self._notifier = await asyncpg.connect(self._dsn)
                    await self._notifier.execute(
                        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", CHANNEL, payloads
                    )
                    break
                except Exception as exc:  # the database is unreachable: keep them, in order, and retry
                    log.warning("could not publish events; retrying", error=type(exc).__name__, retry_s=delay)
                    self._notifier = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            for _ in batch:
                self._outgoing.task_done()

    async def _deliver(self) -> None:
        while True:
            payload = await self._incoming.get()
            try:
                decoded = decode_message(payload)
                message = await self._load(decoded) if isinstance(decoded, Reference) else decoded
                if isinstance(message, Presence):
                    self._hub.deliver_presence(message)
                elif isinstance(message, Cancel):
                    self.cancels.put_nowait(message)
                elif message is not None:
                    self._hub.deliver(message)
            except Exception:
                log.exception("an event could not be delivered")

    async def _load(self, ref: Reference) -> Event | None:
        """An event that travelled by reference, rebuilt from what is stored."""
        async with self._db.reader() as s:
            if ref.message_id is not None:
                row = await store.get_message(s, ref.message_id)
                if row is None:
                    return None
                frame = NewMessageFrame(message=message_out(row))
                return Event(ref.session_id, frame, ref.seq, ref.origin, ref.ref)
            record = await store.get_record(s, ref.record_id or "")
            if record is None:
                return None
            message = await store.get_message(s, record.ai_message_id) if record.ai_message_id else None
        final = stored_final_frame(record, message_out(message) if message else None)
        return Event(ref.session_id, final, ref.seq, ref.origin, ref.ref)
