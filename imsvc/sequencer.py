"""The single place where a session's events are ordered: allocate `seq`, store, commit, publish.

Every stored event (a user's message, an AI reply's outcome) is handed to `submit` and waits for
its result. One writer task takes whatever is waiting (up to BATCH_LIMIT items, never waiting for
more) and stores it all in one transaction (group commit): an idle server answers in one round
trip, a busy one stores many senders' messages per commit. After the commit, in `seq` order and
without an await between them, each waiter gets its result and each event goes to the bus, so
the order in which seqs are committed is the order in which every socket receives them.

An item that is refused (a non-member's send) fails alone; the others commit. A batch that breaks
a unique constraint (a retried client_msg_id racing another process) is stored again one item at a
time. A commit whose answer was lost is resolved by reading back what it would have stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from imsvc import ledger
from imsvc.bus import Bus
from imsvc.db import Database
from imsvc.errors import Forbidden, ImsvcError, NotReady
from imsvc.events import Event
from imsvc.ledger import Original, RecordOutcome
from imsvc.logs import get_logger
from imsvc.metrics import Metrics
from imsvc.models import RecordStatus, utcnow
from imsvc.schemas import ErrorDetail, FrameId, MessageOut, NewMessageFrame, final_reply_frame
from imsvc.store import new_id

log = get_logger(__name__)

BATCH_LIMIT = 500
VERIFY_ATTEMPTS = 8  # after a lost commit answer: 0.05 s doubling, about 6 s in all


@dataclass(frozen=True, slots=True)
class Send:
    """A user's message. `reply_model`: start a reply (a record at status 0) if the session has the assistant."""

    session_id: str
    author: str
    content: str
    client_msg_id: str | None = None
    reply_model: str | None = None
    origin: str | None = None
    ref: FrameId | None = None


@dataclass(frozen=True, slots=True)
class ReplyEnd:
    """An AI reply's outcome: its text stored as the assistant's message (when there is any), its record closed."""

    session_id: str
    record_id: str
    user_message_id: str
    author: str
    text: str
    outcome: RecordOutcome
    error: ImsvcError | None = None  # None: the reply ended (`ai_reply`); else `ai_reply_error` with this code


@dataclass(frozen=True, slots=True)
class AddMember:
    """Any member may add a user to the session; the added user's sockets receive it from then on."""

    session_id: str
    actor: str
    user_id: str


@dataclass(frozen=True, slots=True)
class Added:
    session_id: str
    user_id: str
    role: str
    joined_at: datetime
    created: bool


Op = Send | ReplyEnd | AddMember


@dataclass(frozen=True, slots=True)
class Stored:
    message: MessageOut
    duplicate: bool
    record_id: str | None = None
    record_status: RecordStatus | None = None


@dataclass(slots=True)
class _Item:
    op: Op
    future: asyncio.Future[Any]
    result: Stored | MessageOut | Added | None = None
    error: Exception | None = None
    same_as: _Item | None = None  # a retry of an earlier item of this batch
    row: dict[str, Any] | None = None
    record_id: str | None = None
    joined: tuple[str, ...] = ()


@dataclass(slots=True)
class _Plan:
    rows: list[_Item] = field(default_factory=list)  # items that store a message row, in seq order
    records: list[dict[str, Any]] = field(default_factory=list)
    ends: list[tuple[str, str | None, RecordOutcome]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    last_seqs: dict[str, int] = field(default_factory=dict)


class Sequencer:
    def __init__(self, db: Database, bus: Bus, metrics: Metrics) -> None:
        self._db = db
        self._bus = bus
        self._metrics = metrics
        self._waiting: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

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

    async def add_member(self, op: AddMember) -> Added:
        result: Added = await self._submit(op)
        return result

    async def end_reply(self, op: ReplyEnd) -> MessageOut | None:
        """Store a reply's outcome; the assistant's message, if it had text."""
        result: MessageOut | None = await self._submit(op)
        return result

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        if self._closing and self._writer is not None and self._writer.done():
            raise NotReady("the server is shutting down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Item(op, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), BATCH_LIMIT))]
            self._metrics.batch_size.observe(len(batch))
            try:
                await self._write(batch)
            except Exception as exc:  # the writer must outlive any one batch
                log.exception("a batch failed")
                for item in batch:
                    _settle(item, error=exc)

    async def _write(self, batch: list[_Item]) -> None:
        plan: _Plan | None = None
        committing = False
        try:
            async with self._db.writer() as c:
                plan = await self._store(c, batch, utcnow())
                committing = True
                await c.commit()
        except IntegrityError:
            if len(batch) == 1:
                await self._after_conflict(batch[0])
                return
            for item in batch:  # someone else stored one of these first: find out which, one at a time
                item.error = item.same_as = item.row = item.record_id = None
                item.joined = ()
                await self._write([item])
            return
        except Exception as exc:
            if not (committing and plan is not None and await self._committed(plan)):
                for item in batch:
                    _settle(item, error=exc)
                return
            log.warning("a commit's answer was lost, but it was stored")
        assert plan is not None
        for item in batch:
            self._finish(item)

    async def _store(self, c: AsyncConnection, batch: list[_Item], now: datetime) -> _Plan:
        sends = [item.op for item in batch if isinstance(item.op, Send)]
        found = await ledger.originals(c, {key for op in sends if (key := _client_key(op)) is not None})
        state = await ledger.lock_sessions(c, (item.op.session_id for item in batch))
        owners: dict[str, str] = {}
        for send in sends:
            if send.session_id not in state:
                owners.setdefault(send.session_id, send.author)
        created = await ledger.create_sessions(c, owners, now)
        if owners:
            state |= await ledger.lock_sessions(c, owners)
        adds = [item.op for item in batch if isinstance(item.op, AddMember)]
        allowed = await ledger.memberships(
            c,
            [(op.session_id, op.author) for op in sends]
            + [(add.session_id, who) for add in adds for who in (add.actor, add.user_id)],
        )

        plan = _Plan(last_seqs={sid: s.last_seq for sid, s in state.items()})
        first_of: dict[tuple[str, str, str], _Item] = {}
        for item in batch:
            op = item.op
            if isinstance(op, Send):
                key = _client_key(op)
                if key is not None and key in found:
                    item.result = _duplicate(found[key])
                    continue
                if key is not None and key in first_of:
                    item.same_as = first_of[key]
                    continue
                if (op.session_id, op.author) not in allowed:
                    item.error = Forbidden("not a member of this session")
                    continue
                if key is not None:
                    first_of[key] = item
                if op.session_id in created and op.author == owners[op.session_id]:
                    created.remove(op.session_id)  # its first message tells the hub who is in it
                    item.joined = (op.author,)
                self._add_row(plan, item, op.session_id, op.author, op.content, op.client_msg_id, now)
                if op.reply_model is not None and state[op.session_id].ai_enabled:
                    assert item.row is not None
                    record = _new_record(op, item.row["message_id"], now)
                    item.record_id = record["record_id"]
                    plan.records.append(record)
            elif isinstance(op, AddMember):
                if (op.session_id, op.actor) not in allowed:
                    item.error = Forbidden("not a member of this session")
                    continue
                present = allowed.get((op.session_id, op.user_id))
                if present is not None:
                    item.result = Added(op.session_id, op.user_id, present.role, present.joined_at, False)
                    continue
                allowed[(op.session_id, op.user_id)] = ledger.Membership("member", now)
                plan.members.append(
                    {"session_id": op.session_id, "user_id": op.user_id, "role": "member", "joined_at": now}
                )
                item.result = Added(op.session_id, op.user_id, "member", now, True)
                item.joined = (op.user_id,)
            else:
                if op.text:
                    self._add_row(plan, item, op.session_id, op.author, op.text, None, now)
                ai_message_id = item.row["message_id"] if item.row is not None else None
                plan.ends.append((op.record_id, ai_message_id, op.outcome))

        if plan.rows:
            rows = [item.row for item in plan.rows if item.row is not None]
            advanced = {sid: plan.last_seqs[sid] for sid in {row["session_id"] for row in rows}}
            for row, row_id in zip(rows, await ledger.append_rows(c, rows, advanced, now), strict=True):
                row["id"] = row_id
        await ledger.insert_members(c, plan.members)
        await ledger.insert_records(c, plan.records)
        await ledger.finish_records(c, plan.ends, now)
        return plan

    @staticmethod
    def _add_row(
        plan: _Plan, item: _Item, session_id: str, author: str, content: str, client_msg_id: str | None, now: datetime
    ) -> None:
        seq = plan.last_seqs[session_id] + 1
        plan.last_seqs[session_id] = seq
        item.row = {
            "message_id": new_id("msg"),
            "session_id": session_id,
            "seq": seq,
            "from_user_id": author,
            "msg_type": "TEXT",
            "msg_content": content,
            "client_msg_id": client_msg_id,
            "created_at": now,
            "updated_at": now,
        }
        plan.rows.append(item)

    async def _committed(self, plan: _Plan) -> bool:
        """Whether a commit whose answer was lost happened, read back once the database answers again."""
        ids = [item.row["message_id"] for item in plan.rows if item.row is not None]
        delay = 0.05
        for _ in range(VERIFY_ATTEMPTS):
            with contextlib.suppress(Exception):
                async with self._db.engine.connect() as c:
                    if ids:
                        return await ledger.stored(c, ids) > 0
                    return await ledger.closed_records(c, [end[0] for end in plan.ends]) > 0
            await asyncio.sleep(delay)  # backoff while the database is unreachable
            delay *= 2
        return False

    async def original(self, session_id: str, author: str, client_msg_id: str) -> Stored | None:
        """The message stored earlier under this client_msg_id, as a duplicate answer."""
        key = (session_id, author, client_msg_id)
        async with self._db.engine.connect() as c:
            found = await ledger.originals(c, [key])
        return _duplicate(found[key]) if key in found else None

    async def _after_conflict(self, item: _Item) -> None:
        """A lone item broke a unique constraint: a retry whose original another writer stored first."""
        op = item.op
        found = await self.original(*key) if (key := _client_key(op)) is not None else None
        if found is None:
            _settle(item, error=RuntimeError("a unique constraint failed without an original"))
            return
        _settle(item, result=found)

    def _finish(self, item: _Item) -> None:
        """Answer the waiter and publish the event; synchronous, so that events leave in seq order."""
        if item.same_as is not None:
            first = item.same_as
            if isinstance(first.result, Stored):
                _settle(
                    item, result=Stored(first.result.message, True, first.result.record_id, first.result.record_status)
                )
            else:
                _settle(item, error=first.error or RuntimeError("the original failed"))
            return
        if isinstance(item.result, Added) and item.result.created:
            self._bus.publish(Event(item.result.session_id, joined=item.joined))
        if item.error is not None or item.result is not None:
            _settle(item, result=item.result, error=item.error)
            return
        op = item.op
        assert not isinstance(op, AddMember)
        message = MessageOut.model_construct(**item.row) if item.row is not None else None
        if message is not None:
            self._metrics.messages_stored.inc()
        if isinstance(op, Send):
            assert message is not None
            record_id = item.record_id
            item.result = Stored(message, False, record_id, RecordStatus.PROCESSING if record_id else None)
            self._bus.publish(
                Event(op.session_id, NewMessageFrame(message=message), message.seq, op.origin, op.ref, item.joined)
            )
        else:
            item.result = message
            error = ErrorDetail(code=op.error.code, message=op.error.message) if op.error else None
            frame = final_reply_frame(
                op.record_id, op.session_id, op.user_message_id, op.text, message, op.outcome.finish_reason, error
            )
            self._bus.publish(Event(op.session_id, frame, message.seq if message else None))
        _settle(item, result=item.result)


def _client_key(op: Op) -> tuple[str, str, str] | None:
    if isinstance(op, Send) and op.client_msg_id is not None:
        return (op.session_id, op.author, op.client_msg_id)
    return None


def _duplicate(original: Original) -> Stored:
    return Stored(original.message, True, original.record_id, original.record_status)


def _new_record(op: Send, message_id: str, now: datetime) -> dict[str, Any]:
    return {
        "record_id": new_id("record"),
        "session_id": op.session_id,
        "user_message_id": message_id,
        "request_content": "",
        "status": int(RecordStatus.PROCESSING),
        "model": op.reply_model,
        "created_at": now,
        "updated_at": now,
    }


def _settle(item: _Item, result: object = None, error: Exception | None = None) -> None:
    if item.future.done():  # its waiter is gone
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(result)
