"""The single place where a session's events are ordered: allocate `seq`, store, commit, publish.

Every stored event (a user's message, a change to a message, a member added, an AI reply's outcome)
is handed to the sequencer and waits for its result. The writer takes whatever is waiting (up to
BATCH_LIMIT ops, never waiting for more) and stores it all in one transaction (group commit,
`imsvc/batch.py`): an idle server answers in one round trip, a busy one stores many senders'
messages per commit, with up to PIPELINE batches in flight. After a commit, in `seq` order and
without an await between them, each waiter gets its result and each event goes to the bus, so the
order in which seqs are committed is the order in which every socket receives them.

An op that is refused (a non-member's send) fails alone; the others commit. A batch that breaks a
unique constraint (a retried client_msg_id racing another process) is stored again one op at a
time. A commit whose answer was lost is resolved by reading back what it would have stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from sqlalchemy.exc import IntegrityError

from imsvc import ledger
from imsvc.batch import (
    Added,
    AddMember,
    Batch,
    Change,
    Changed,
    Configure,
    Configured,
    Item,
    Marked,
    MarkRead,
    Op,
    Removed,
    RemoveMember,
    ReplyEnd,
    Send,
    Stored,
)
from imsvc.bus import Bus
from imsvc.db import Database
from imsvc.errors import NotReady
from imsvc.events import Event
from imsvc.logs import get_logger
from imsvc.metrics import Metrics
from imsvc.models import utcnow
from imsvc.schemas import MessageOut

log = get_logger(__name__)

BATCH_LIMIT = 500
# Batches in flight on PostgreSQL: one is being stored while the one before it commits, so the
# process works while the database does. Two batches touching one session are ordered by its row lock.
PIPELINE = 2
VERIFY_ATTEMPTS = 8  # after a lost commit answer: 0.05 s doubling, about 6 s in all


class Sequencer:
    def __init__(self, db: Database, bus: Bus, metrics: Metrics, owner: str | None = None) -> None:
        self._db = db
        self._owner = owner  # this process, as the owner of the replies it starts (BUS=postgres)
        self._bus = bus
        self._metrics = metrics
        self._waiting: deque[Item] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def owner(self) -> str | None:
        return self._owner

    def start(self) -> None:
        self._writer = asyncio.create_task(self._run(), name="sequencer")

    async def close(self) -> None:
        """Store what is waiting, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer

    async def send(self, op: Send) -> Stored:
        result: Stored = await self._submit(op)
        return result

    async def change(self, op: Change) -> Changed:
        result: Changed = await self._submit(op)
        return result

    async def add_member(self, op: AddMember) -> Added:
        result: Added = await self._submit(op)
        return result

    async def remove_member(self, op: RemoveMember) -> Removed:
        result: Removed = await self._submit(op)
        return result

    async def configure(self, op: Configure) -> Configured:
        result: Configured = await self._submit(op)
        return result

    async def mark_read(self, op: MarkRead) -> Marked:
        result: Marked = await self._submit(op)
        return result

    async def end_reply(self, op: ReplyEnd) -> MessageOut | None:
        """Store a reply's outcome; the assistant's message, if it had text."""
        result: MessageOut | None = await self._submit(op)
        return result

    async def original(self, session_id: str, author: str, client_msg_id: str) -> Stored | None:
        """The message stored earlier under this client_msg_id, as a duplicate answer."""
        key = (session_id, author, client_msg_id)
        async with self._db.engine.connect() as c:
            found = await ledger.originals(c, [key])
        if key not in found:
            return None
        original = found[key]
        return Stored(original.message, True, original.record_id, original.record_status)

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        if self._closing and self._writer is not None and self._writer.done():
            raise NotReady("the server is shutting down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(Item(op, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(1 if self._db.is_sqlite else PIPELINE)
        while True:
            if not self._waiting:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await slots.acquire()
            items = [self._waiting.popleft() for _ in range(min(len(self._waiting), BATCH_LIMIT))]
            self._metrics.batch_size.observe(len(items))
            task = asyncio.create_task(self._batch(items, slots))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)

    async def _batch(self, items: list[Item], slots: asyncio.Semaphore) -> None:
        try:
            await self._write(items)
        except Exception as exc:  # the writer must outlive any one batch
            log.exception("a batch failed")
            for item in items:
                _settle(item, error=exc)
        finally:
            slots.release()

    async def _write(self, items: list[Item], again: bool = True) -> None:
        """Store a batch and, as soon as its commit returns, answer its waiters and publish its events.

        Answering in commit order keeps every session's order: a later batch with one of its sessions
        waited for this batch's commit to lock it, and has statements of its own still to run."""
        batch = Batch(items, utcnow(), self._owner)
        committing = False
        outcomes: list[tuple[Any, Exception | None, Event | None]] = []
        try:
            async with self._db.writer() as c:
                await batch.store(c)
                outcomes = [self._outcome(batch, item) for item in items]
                await self._bus.notify_in(c, [event for _, _, event in outcomes if event is not None])
                committing = True
                await c.commit()
        except IntegrityError as exc:
            # Another writer stored one of these first (a retried client_msg_id): alone, and once more,
            # each finds its original and is answered with it.
            if len(items) == 1 and not again:
                _settle(items[0], error=exc)
                return
            for item in items:
                item.reset()
                await self._write([item], again=len(items) > 1)
            return
        except Exception as exc:
            if not (committing and await self._committed(batch)):
                for item in items:
                    _settle(item, error=exc)
                return
            log.warning("a commit's answer was lost, but it was stored")
        for item, (result, error, event) in zip(items, outcomes, strict=True):  # synchronous: in seq order
            if event is not None:
                if event.seq is not None:
                    self._metrics.messages_stored.inc()
                self._bus.committed(event)
            _settle(item, result, error)

    @staticmethod
    def _outcome(batch: Batch, item: Item) -> tuple[Any, Exception | None, Event | None]:
        try:
            return batch.outcome(item)
        except Exception as exc:  # this item alone fails (stored, but its answer cannot be built)
            log.exception("an event's answer could not be built")
            return None, exc, None

    async def _committed(self, batch: Batch) -> bool:
        """Whether a commit whose answer was lost happened, read back once the database answers again."""
        ids = [item.row["message_id"] for item in batch.rows if item.row is not None]
        delay = 0.05
        for _ in range(VERIFY_ATTEMPTS):
            with contextlib.suppress(Exception):
                async with self._db.engine.connect() as c:
                    if ids:
                        return await ledger.stored(c, ids) > 0
                    return await ledger.closed_records(c, [end[0] for end in batch.ends]) > 0
            await asyncio.sleep(delay)  # backoff while the database is unreachable
            delay *= 2
        return False


def _settle(item: Item, result: object = None, error: Exception | None = None) -> None:
    if item.future.done():  # its waiter is gone
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(result)
