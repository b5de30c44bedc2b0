"""Unit tests of imsvc.hub: the per-socket bounded send buffer, delta merging, slow-consumer close, the Hub."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio

from imsvc.events import Event
from imsvc.hub import CLOSE_SHUTDOWN, CLOSE_SLOW_CONSUMER, Connection, Hub
from imsvc.schemas import (
    AiReplyDeltaFrame,
    AiReplySnapshotFrame,
    MessageOut,
    NewMessageFrame,
    PongFrame,
)
from imsvc.wsproto import Prepared

TIMEOUT = 2.0
SESSION = "s1"


class FakeWire:
    """A socket's outgoing side, recorded: `gate` is whether its buffer takes frames (the network draining)."""

    def __init__(self, *, blocked: bool = False, connected: bool = True) -> None:
        self.connected = connected
        self.gate = asyncio.Event()
        if not blocked:
            self.gate.set()
        self.log: list[tuple[Any, ...]] = []  # ("send", frame) as written, ("close", code, reason)
        self._changed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.connected and self.gate.is_set()

    async def until_writable(self) -> None:
        await self.gate.wait()

    def write(self, frame: Prepared) -> None:
        assert self.ready, "written while the socket does not take frames"
        self.log.append(("send", json.loads(frame.text)))
        self._changed.set()

    async def close(self, code: int, reason: str) -> None:
        if self.connected:
            self.log.append(("close", code, reason))
            self.connected = False
        self._changed.set()

    def abort(self) -> None:
        self.log.append(("abort",))
        self.connected = False
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [entry[1] for entry in self.log if entry[0] == "send"]

    @property
    def closes(self) -> list[tuple[int, str]]:
        return [(entry[1], entry[2]) for entry in self.log if entry[0] == "close"]


@pytest_asyncio.fixture
async def senders() -> AsyncIterator[Callable[[Connection], asyncio.Task[None]]]:
    """Start `conn.run_sender()` as a task; every task is cancelled and awaited at the end of the test."""
    tasks: list[asyncio.Task[None]] = []

    def start(conn: Connection) -> asyncio.Task[None]:
        task = asyncio.create_task(conn.run_sender())
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def finished(task: asyncio.Task[None]) -> None:
    """The sender returns once it has closed the socket."""
    await asyncio.wait_for(asyncio.shield(task), TIMEOUT)


def pong(n: int) -> PongFrame:
    return PongFrame(ref=n)


def pong_wire(n: int) -> dict[str, Any]:
    return {"type": "pong", "ref": n}


def delta(record_id: str, text: str, offset: int) -> AiReplyDeltaFrame:
    return AiReplyDeltaFrame(record_id=record_id, session_id=SESSION, delta=text, offset=offset)


def delta_wire(record_id: str, text: str, offset: int) -> dict[str, Any]:
    return {"type": "ai_reply_delta", "record_id": record_id, "session_id": SESSION, "delta": text, "offset": offset}


def snapshot(record_id: str, content: str) -> AiReplySnapshotFrame:
    return AiReplySnapshotFrame(record_id=record_id, session_id=SESSION, user_message_id="m1", content=content)


def snapshot_wire(record_id: str, content: str) -> dict[str, Any]:
    return {
        "type": "ai_reply_snapshot",
        "record_id": record_id,
        "session_id": SESSION,
        "user_message_id": "m1",
        "content": content,
    }


async def blocked_with_frame_in_flight(
    start: Callable[[Connection], asyncio.Task[None]], *, limit: int = 10
) -> tuple[FakeWire, Connection, asyncio.Task[None]]:
    """A connection that wrote pong(0) and whose socket then stopped taking frames: everything sent
    afterwards waits in the outbox."""
    ws = FakeWire()
    conn = Connection(ws, "alice", limit)
    task = start(conn)
    conn.send(pong(0))
    ws.gate.clear()
    return ws, conn, task


# 1. Order and close


async def test_frames_are_sent_in_order(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    ws = FakeWire()
    conn = Connection(ws, "alice", 10)
    senders(conn)
    conn.send(pong(1))
    conn.send('{"type": "raw", "n": 2}')
    conn.send(delta("r1", "hi", 0))
    conn.send(snapshot("r1", "hi"))
    conn.send(pong(5))
    await ws.wait_until(lambda: len(ws.log) == 5)
    assert ws.sent == [
        pong_wire(1),
        {"type": "raw", "n": 2},
        delta_wire("r1", "hi", 0),
        snapshot_wire("r1", "hi"),
        pong_wire(5),
    ]
    assert ws.closes == []
    assert not conn.closing


async def test_close_flushes_buffer_then_closes_with_code(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    ws, conn, task = await blocked_with_frame_in_flight(senders)
    conn.send(pong(1))
    conn.send(delta("r1", "ab", 0))
    conn.send(pong(2))
    conn.close(CLOSE_SHUTDOWN, "server shutting down")
    assert conn.closing
    assert ws.log == [("send", pong_wire(0))]  # nothing more sent, nor closed, while the network is blocked
    ws.gate.set()
    await finished(task)
    assert ws.log == [
        ("send", pong_wire(0)),
        ("send", pong_wire(1)),
        ("send", delta_wire("r1", "ab", 0)),
        ("send", pong_wire(2)),
        ("close", CLOSE_SHUTDOWN, "server shutting down"),
    ]


async def test_close_with_empty_buffer_closes_at_once(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    ws = FakeWire()
    conn = Connection(ws, "alice", 10)
    task = senders(conn)
    conn.close(1000)
    await finished(task)
    assert ws.log == [("close", 1000, "")]


async def test_frames_after_close_are_dropped_and_first_close_code_wins(
    senders: Callable[[Connection], asyncio.Task[None]],
) -> None:
    ws, conn, task = await blocked_with_frame_in_flight(senders)
    conn.send(pong(1))
    conn.close(CLOSE_SHUTDOWN, "bye")
    conn.send(pong(2))
    conn.send(delta("r1", "late", 0))
    conn.close(1000, "second")
    ws.gate.set()
    await finished(task)
    assert ws.log == [("send", pong_wire(0)), ("send", pong_wire(1)), ("close", CLOSE_SHUTDOWN, "bye")]


async def test_close_is_not_sent_to_a_socket_no_longer_connected(
    senders: Callable[[Connection], asyncio.Task[None]],
) -> None:
    ws = FakeWire(connected=False)
    conn = Connection(ws, "alice", 10)
    task = senders(conn)
    conn.send(pong(1))
    conn.close(1000)
    await finished(task)
    assert ws.log == []


# 2. Delta merging


async def test_consecutive_deltas_of_one_record_merge(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    ws, conn, task = await blocked_with_frame_in_flight(senders)
    first = delta("r1", "Hel", 0)
    conn.send(first)
    conn.send(delta("r1", "lo", 3))
    conn.send(delta("r1", " world", 5))
    conn.close(1000)
    ws.gate.set()
    await finished(task)
    assert ws.sent == [pong_wire(0), delta_wire("r1", "Hello world", 0)]
    assert (first.delta, first.offset) == ("Hel", 0)  # the caller's frame is not modified by merging


async def test_interleaved_records_merge_within_their_own_record(
    senders: Callable[[Connection], asyncio.Task[None]],
) -> None:
    ws, conn, task = await blocked_with_frame_in_flight(senders)
    conn.send(delta("A", "ab", 0))
    conn.send(delta("B", "x", 10))
    conn.send(delta("A", "cd", 2))
    conn.send(delta("B", "yz", 11))
    conn.send(delta("A", "e", 4))
    conn.close(1000)
    ws.gate.set()
    await finished(task)
    assert ws.sent == [pong_wire(0), delta_wire("A", "abcde", 0), delta_wire("B", "xyz", 10)]


async def test_non_delta_frame_stops_merging(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    ws, conn, task = await blocked_with_frame_in_flight(senders)
    conn.send(delta("A", "ab", 0))
    conn.send(delta("B", "x", 0))
    conn.send(snapshot("A", "ab"))
    conn.send(delta("A", "cd", 2))
    conn.send(delta("B", "y", 1))  # B too: nothing may be merged in front of the snapshot
    conn.send(delta("A", "e", 4))
    conn.send('{"type": "ai_reply", "record_id": "A"}')  # rendered without a model: ends merges as well
    conn.send(delta("A", "f", 5))
    conn.close(1000)
    ws.gate.set()
    await finished(task)
    assert ws.sent == [
        pong_wire(0),
        delta_wire("A", "ab", 0),
        delta_wire("B", "x", 0),
        snapshot_wire("A", "ab"),
        delta_wire("A", "cde", 2),
        delta_wire("B", "y", 1),
        {"type": "ai_reply", "record_id": "A"},
        delta_wire("A", "f", 5),
    ]


async def test_delta_being_sent_is_not_merged_into(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    ws = FakeWire()
    conn = Connection(ws, "alice", 10)
    task = senders(conn)
    conn.send(delta("A", "ab", 0))  # on the wire already
    ws.gate.clear()
    conn.send(delta("A", "cd", 2))
    conn.send(delta("A", "e", 4))
    conn.close(1000)
    ws.gate.set()
    await finished(task)
    assert ws.sent == [delta_wire("A", "ab", 0), delta_wire("A", "cde", 2)]


# 4. Non-contiguous deltas


async def test_non_contiguous_delta_is_not_merged(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    ws, conn, task = await blocked_with_frame_in_flight(senders)
    conn.send(delta("A", "ab", 0))
    conn.send(delta("A", "xy", 5))  # gap: offsets 2..4 missing
    conn.send(delta("A", "z", 7))  # contiguous with the new one
    conn.send(delta("A", "q", 3))  # behind: not merged either
    conn.close(1000)
    ws.gate.set()
    await finished(task)
    assert ws.sent == [pong_wire(0), delta_wire("A", "ab", 0), delta_wire("A", "xyz", 5), delta_wire("A", "q", 3)]


# 3. Slow consumer


async def test_slow_consumer_is_closed_1008_and_buffer_dropped(
    senders: Callable[[Connection], asyncio.Task[None]],
) -> None:
    limit = 3
    ws, conn, task = await blocked_with_frame_in_flight(senders, limit=limit)
    for n in range(1, limit + 1):
        conn.send(pong(n))
    conn.send(delta("A", "ab", 0))
    assert not conn.closing  # exactly `limit` frames waiting is still fine
    conn.send(pong(limit + 1))
    assert conn.closing
    conn.send(pong(99))
    conn.send(delta("A", "cd", 2))
    # The peer never drains: what waits is dropped and the close goes out at once.
    await finished(task)
    assert ws.log == [("send", pong_wire(0)), ("close", CLOSE_SLOW_CONSUMER, "slow consumer")]


async def test_slow_consumer_without_a_running_sender(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    ws = FakeWire(blocked=True)
    conn = Connection(ws, "alice", 2)
    conn.send(pong(1))
    conn.send(pong(2))
    assert not conn.closing
    conn.send(pong(3))
    assert conn.closing
    task = senders(conn)
    await finished(task)
    assert ws.log == [("close", CLOSE_SLOW_CONSUMER, "slow consumer")]


async def test_sent_frames_free_their_places(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    limit = 2
    ws = FakeWire()
    conn = Connection(ws, "alice", limit)
    senders(conn)
    for round_ in range(5):
        conn.send(pong(2 * round_))
        conn.send(pong(2 * round_ + 1))
        expected = 2 * round_ + 2
        await ws.wait_until(lambda: len(ws.sent) == expected)  # noqa: B023 - awaited within this iteration
    assert not conn.closing
    assert ws.sent == [pong_wire(n) for n in range(10)]


async def test_deltas_alone_never_close_a_slow_consumer(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    limit = 2
    ws, conn, task = await blocked_with_frame_in_flight(senders, limit=limit)
    pieces = [f"w{n} " for n in range(3000)]
    offsets = {"A": 0, "B": 0}
    for piece in pieces:
        for record_id in ("A", "B"):
            conn.send(delta(record_id, piece, offsets[record_id]))
            offsets[record_id] += len(piece)
    assert not conn.closing
    # Deltas took no places: the full `limit` of other frames still fits.
    for n in range(1, limit + 1):
        conn.send(pong(n))
    assert not conn.closing
    conn.close(1000)
    ws.gate.set()
    await finished(task)
    text = "".join(pieces)
    assert ws.log == [
        ("send", pong_wire(0)),
        ("send", delta_wire("A", text, 0)),
        ("send", delta_wire("B", text, 0)),
        *[("send", pong_wire(n)) for n in range(1, limit + 1)],
        ("close", 1000, ""),
    ]


# 5. Hub


def hub_connection(user_id: str, *, limit: int = 10, blocked: bool = False) -> tuple[FakeWire, Connection]:
    ws = FakeWire(blocked=blocked)
    return ws, Connection(ws, user_id, limit)


def test_register_respects_max_connections_and_unregister_is_idempotent() -> None:
    hub = Hub(max_connections=2)
    _, a = hub_connection("alice")
    _, b = hub_connection("alice")
    _, c = hub_connection("bob")
    assert hub.register(a) is True
    assert hub.register(b) is True
    assert hub.count == 2
    assert hub.register(c) is False
    assert hub.count == 2
    hub.unregister(a)
    assert hub.count == 1
    hub.unregister(a)  # again: no effect
    hub.unregister(c)  # never registered: no effect
    assert hub.count == 1
    assert hub.register(c) is True
    assert hub.count == 2
    _, d = hub_connection("carol")
    assert hub.register(d) is False
    hub.unregister(b)
    hub.unregister(c)
    assert hub.count == 0


def message(n: int) -> NewMessageFrame:
    return NewMessageFrame(
        message=MessageOut(
            id=n,
            message_id=f"m{n}",
            session_id=SESSION,
            seq=n,
            from_user_id="alice",
            msg_type="TEXT",
            msg_content=str(n),
            client_msg_id=None,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )


def seqs(ws: FakeWire) -> list[tuple[str, int]]:
    return [(f["type"], f["message"]["seq"]) for f in ws.sent]


def joined(hub: Hub, *conns: Connection, session_id: str = SESSION) -> None:
    for conn in conns:
        assert hub.register(conn)
        hub.subscribe(conn, [session_id])


async def test_unregistered_connection_gets_no_events(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    hub = Hub(max_connections=10)
    ws_a, a = hub_connection("alice")
    ws_b, b = hub_connection("alice")
    joined(hub, a, b)
    hub.unregister(a)
    hub.deliver(Event(SESSION, message(1), seq=1))
    tasks = [senders(a), senders(b)]
    a.close(1000)
    b.close(1000)
    for task in tasks:
        await finished(task)
    assert ws_a.log == [("close", 1000, "")]
    assert seqs(ws_b) == [("new_message", 1)]


async def test_deliver_to_every_members_socket_and_answer_the_origin(
    senders: Callable[[Connection], asyncio.Task[None]],
) -> None:
    hub = Hub(max_connections=10)
    sockets: dict[str, FakeWire] = {}
    conns: dict[str, Connection] = {}
    for name, user in [("alice1", "alice"), ("alice2", "alice"), ("bob1", "bob"), ("carol1", "carol")]:
        sockets[name], conns[name] = hub_connection(user)
    joined(hub, conns["alice1"], conns["alice2"], conns["bob1"])
    joined(hub, conns["carol1"], session_id="elsewhere")
    tasks = [senders(conn) for conn in conns.values()]
    hub.deliver(Event(SESSION, message(1), seq=1, origin=conns["alice1"].id, ref="r1"))
    hub.deliver(Event(SESSION, message(2), seq=2))
    hub.close_all(CLOSE_SHUTDOWN, "server shutting down")
    for task in tasks:
        await finished(task)
    assert seqs(sockets["alice1"]) == [("message_sent", 1), ("new_message", 2)]
    assert sockets["alice1"].sent[0]["ref"] == "r1" and sockets["alice1"].sent[0]["duplicate"] is False
    assert seqs(sockets["alice2"]) == seqs(sockets["bob1"]) == [("new_message", 1), ("new_message", 2)]
    assert sockets["carol1"].log == [("close", CLOSE_SHUTDOWN, "server shutting down")]


async def test_joined_and_left_follow_the_events(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    hub = Hub(max_connections=10)
    ws_a, a = hub_connection("alice")
    ws_b, b = hub_connection("bob")
    joined(hub, a)
    assert hub.register(b)
    hub.subscribe(b, [])
    hub.deliver(Event(SESSION, message(1), seq=1))
    hub.deliver(Event(SESSION, message(2), seq=2, joined=("bob",)))  # bob receives the event that adds him
    hub.deliver(Event(SESSION, message(3), seq=3))
    hub.deliver(Event(SESSION, message(4), seq=4, left=("bob",)))  # ... and the one that removes him
    hub.deliver(Event(SESSION, message(5), seq=5))
    tasks = [senders(a), senders(b)]
    hub.close_all(1000, "")
    for task in tasks:
        await finished(task)
    assert [seq for _, seq in seqs(ws_a)] == [1, 2, 3, 4, 5]
    assert [seq for _, seq in seqs(ws_b)] == [2, 3, 4]


async def test_a_session_joined_while_the_sessions_are_read_is_kept(
    senders: Callable[[Connection], asyncio.Task[None]],
) -> None:
    hub = Hub(max_connections=10)
    ws, conn = hub_connection("bob")
    assert hub.register(conn)
    hub.deliver(Event("new", joined=("bob",)))  # committed after the read began, delivered before it ended
    hub.deliver(Event("gone", left=("bob",)))  # left while the read (which still lists it) was under way
    hub.subscribe(conn, ["old", "gone"])
    for session_id in ("old", "new", "gone"):
        hub.deliver(
            Event(
                session_id,
                message(1).model_copy(
                    update={"message": message(1).message.model_copy(update={"session_id": session_id})}
                ),
            )
        )
    task = senders(conn)
    conn.close(1000)
    await finished(task)
    assert [f["message"]["session_id"] for f in ws.sent] == ["old", "new"]


async def test_deliver_delta_merges_per_connection(senders: Callable[[Connection], asyncio.Task[None]]) -> None:
    hub = Hub(max_connections=10)
    ws_a, a = hub_connection("alice", blocked=True)
    ws_b, b = hub_connection("bob", blocked=True)
    joined(hub, a, b)
    first, second = delta("A", "a", 0), delta("A", "b", 1)
    hub.deliver(Event(SESSION, first))
    hub.deliver(Event(SESSION, second))
    ws_a.gate.set()
    ws_b.gate.set()
    tasks = [senders(a), senders(b)]
    hub.close_all(1000, "")
    for task in tasks:
        await finished(task)
    expected = [("send", delta_wire("A", "ab", 0)), ("close", 1000, "")]
    assert ws_a.log == expected
    assert ws_b.log == expected  # each connection merges into its own copy, not a shared frame
    assert (first.delta, second.delta) == ("a", "b")


async def test_close_all_closes_every_connection_with_code(
    senders: Callable[[Connection], asyncio.Task[None]],
) -> None:
    hub = Hub(max_connections=10)
    pairs = [hub_connection(user) for user in ("alice", "alice", "bob")]
    for _, conn in pairs:
        hub.register(conn)
    tasks = [senders(conn) for _, conn in pairs]
    pairs[2][1].send(pong(7))
    hub.close_all(CLOSE_SHUTDOWN, "server shutting down")
    assert all(conn.closing for _, conn in pairs)
    for task in tasks:
        await finished(task)
    closed = ("close", CLOSE_SHUTDOWN, "server shutting down")
    assert pairs[0][0].log == [closed]
    assert pairs[1][0].log == [closed]
    assert pairs[2][0].log == [("send", pong_wire(7)), closed]
