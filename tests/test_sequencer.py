"""The sequencer against a real database: group commit, gap-free seqs, items that fail alone, retries in one batch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from imsvc import store
from imsvc.batch import AddMember, ReplyEnd, Send, Stored
from imsvc.bus import MemoryBus
from imsvc.db import Database
from imsvc.errors import Forbidden
from imsvc.events import Event
from imsvc.hub import Connection, Hub
from imsvc.ledger import RecordOutcome
from imsvc.metrics import Metrics
from imsvc.models import Message, RecordStatus
from imsvc.sequencer import Sequencer
from imsvc.wsproto import Prepared
from tests.helpers import uid


class Socket:
    """A stand-in for a socket's outgoing side that keeps what the hub writes to it."""

    ready = True

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def until_writable(self) -> None:
        pass

    def write(self, frame: Prepared) -> None:
        self.frames.append(json.loads(frame.text))

    async def close(self, code: int, reason: str) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class Rig:
    db: Database
    hub: Hub
    sequencer: Sequencer
    metrics: Metrics

    def batches(self) -> int:
        for metric in self.metrics.batch_size.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count"):
                    return int(sample.value)
        return 0

    async def room(self, owner: str, *members: str) -> str:
        session_id = uid("s")
        async with self.db.transaction() as s:
            await store.create_session(s, owner, session_id, None, list(members), ai_enabled=False)
        return session_id

    async def rows(self, session_id: str) -> list[Message]:
        async with self.db.reader() as s:
            return list(await s.scalars(select(Message).where(Message.session_id == session_id).order_by(Message.seq)))


@pytest_asyncio.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    db, hub, metrics = Database(database_url), Hub(10_000), Metrics()
    sequencer = Sequencer(db, MemoryBus(hub), metrics)
    sequencer.start()
    try:
        yield Rig(db, hub, sequencer, metrics)
    finally:
        await sequencer.close()
        await db.dispose()


async def test_concurrent_senders_share_transactions_and_each_gets_its_own_seq(rig: Rig) -> None:
    rooms = {}
    for _ in range(20):
        users = [uid() for _ in range(10)]
        rooms[await rig.room(users[0], *users[1:])] = users
    stranger, target = uid(), next(iter(rooms))
    before = rig.batches()
    sends = [Send(room, user, f"{user} says hi") for room, users in rooms.items() for user in users]
    results = await asyncio.gather(
        *(rig.sequencer.send(op) for op in [*sends[:100], Send(target, stranger, "let me in"), *sends[100:]]),
        return_exceptions=True,
    )
    refused = results.pop(100)
    assert isinstance(refused, Forbidden)  # the non-member's send fails alone
    assert all(isinstance(r, Stored) and not r.duplicate for r in results)
    assert rig.batches() - before < len(sends) / 10, "the sends were not stored together"
    for room, users in rooms.items():
        rows = await rig.rows(room)
        assert [m.seq for m in rows] == list(range(1, len(users) + 1))  # gap-free, the refused one left no hole
        assert {m.from_user_id for m in rows} == set(users)
    by_id = {r.message.message_id: r.message for r in results if isinstance(r, Stored)}
    assert len(by_id) == len(sends)
    for room in rooms:
        stored = {m.message_id: m.seq for m in await rig.rows(room)}
        assert all(by_id[mid].seq == seq for mid, seq in stored.items())


async def test_retries_landing_in_one_batch_store_one_message(rig: Rig) -> None:
    alice = uid()
    room = await rig.room(alice)
    op = Send(room, alice, "once", client_msg_id="c-1")
    first, *repeats = await asyncio.gather(*(rig.sequencer.send(op) for _ in range(4)))
    later = await rig.sequencer.send(op)
    assert not first.duplicate and all(r.duplicate for r in [*repeats, later])
    assert {r.message.message_id for r in [first, *repeats, later]} == {first.message.message_id}
    assert [m.msg_content for m in await rig.rows(room)] == ["once"]


async def test_the_first_message_creates_the_session_and_subscribes_its_sender(rig: Rig) -> None:
    alice, room = uid(), uid("s")
    socket = Socket()
    conn = Connection(socket, alice, 100)
    assert rig.hub.register(conn)
    rig.hub.subscribe(conn, [])
    sender = asyncio.create_task(conn.run_sender())
    results = await asyncio.gather(*(rig.sequencer.send(Send(room, alice, str(n))) for n in range(3)))
    assert [r.message.seq for r in results] == [1, 2, 3]
    conn.close(1000)
    await asyncio.wait_for(sender, 5)
    assert [f["message"]["seq"] for f in socket.frames] == [1, 2, 3]


@pytest.mark.parametrize("text", ["partial answer", ""])
async def test_a_member_added_in_the_batch_that_concludes_a_reply_receives_its_end(rig: Rig, text: str) -> None:
    alice, bob = uid(), uid()
    room = await rig.room(alice)
    asked = await rig.sequencer.send(Send(room, alice, "question"))
    socket = Socket()
    conn = Connection(socket, bob, 100)
    assert rig.hub.register(conn)
    rig.hub.subscribe(conn, [])
    sender = asyncio.create_task(conn.run_sender())
    outcome = RecordOutcome(RecordStatus.SUCCESS, "stop", "{}", text or None, 1, None, None, None, None)
    async with rig.db.transaction() as s:
        record_id = await store.create_record(s, room, asked.message.message_id, "m")
    end = ReplyEnd(room, record_id, asked.message.message_id, "ai_bot", text, outcome)
    await asyncio.gather(rig.sequencer.add_member(AddMember(room, alice, bob)), rig.sequencer.end_reply(end))
    conn.close(1000)
    await asyncio.wait_for(sender, 5)
    added, final = socket.frames  # bob's own MEMBER event, then the reply's end
    assert added["type"] == "new_message" and added["message"]["msg_type"] == "MEMBER"
    assert added["message"]["data"] == {"user_id": bob, "action": "added", "role": "member"}
    assert final["type"] == "ai_reply" and final["content"] == text and final["record_id"] == record_id


async def test_events_name_their_session_and_seq_and_cross_a_process_within_8000_bytes(rig: Rig) -> None:
    from imsvc.events import MAX_ENCODED, Reference, decode, encode

    alice = uid()
    room = await rig.room(alice)
    small = await rig.sequencer.send(Send(room, alice, "hello"))
    big = await rig.sequencer.send(Send(room, alice, "😀" * 5000))  # 20,000 bytes of UTF-8
    for stored in (small, big):
        from imsvc.schemas import NewMessageFrame

        event = Event(room, NewMessageFrame(message=stored.message), stored.message.seq, "sock", 7)
        (text,) = encode(event)
        assert len(text.encode()) <= MAX_ENCODED
        back = decode(text)
        if stored is small:
            assert back == event
        else:
            assert back == Reference(room, stored.message.seq, "sock", 7, message_id=stored.message.message_id)


def test_a_long_delta_crosses_as_consecutive_deltas() -> None:
    from imsvc.events import MAX_ENCODED, decode, encode
    from imsvc.schemas import AiReplyDeltaFrame

    delta = AiReplyDeltaFrame(record_id="r", session_id="s", delta="字" * 6000, offset=10)
    texts = encode(Event("s", delta))
    assert len(texts) > 1 and all(len(t.encode()) <= MAX_ENCODED for t in texts)
    parts = [decode(t) for t in texts]
    frames = [p.frame for p in parts if isinstance(p, Event) and isinstance(p.frame, AiReplyDeltaFrame)]
    assert len(frames) == len(texts)
    offset = 10
    for frame in frames:
        assert frame.offset == offset
        offset += len(frame.delta)
    assert "".join(f.delta for f in frames) == delta.delta
