"""Read markers, unread counts, typing and presence (SPEC §12)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

import httpx
import pytest

from imsvc import chat
from tests import fakellm
from tests.conftest import ServerFactory
from tests.fakellm import FakeLLM
from tests.helpers import LiveServer, auth, token, uid

fake_llm = fakellm.fake_llm


def body(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    found: dict[str, Any] = r.json()
    return found


async def mark(server: LiveServer, user: str, room: str, seq: int) -> httpx.Response:
    return await server.post(f"/sessions/{room}/read", user, {"seq": seq})


async def unread(server: LiveServer, user: str, room: str) -> int:
    listed = {s["session_id"]: s for s in body(await server.get("/sessions", user))["sessions"]}
    one = body(await server.get(f"/sessions/{room}", user))
    assert listed[room]["unread"] == one["unread"]
    count: int = one["unread"]
    return count


async def test_read_markers_only_move_forward_and_are_clamped(server: LiveServer) -> None:
    alice, bob, mallory = uid(), uid(), uid()
    room = await server.room(alice, bob)
    for n in range(3):
        await server.send(alice, room, f"m{n}")
    async with server.ws(bob) as b, server.ws(bob) as b2, server.ws(alice) as a:
        moved = await b.request({"type": "read", "session_id": room, "seq": 2})
        assert moved == {
            "type": "read_marker",
            "ref": moved["ref"],
            "session_id": room,
            "user_id": bob,
            "last_read_seq": 2,
        }
        for other in (b2, a):  # the reader's other devices, and the others (receipts)
            assert await other.recv() == {**moved, "ref": None}
        back = await b.request({"type": "read", "session_id": room, "seq": 1})  # smaller: nothing changes
        assert back["last_read_seq"] == 2
        over = body(await mark(server, bob, room, 99))  # clamped to last_seq
        assert over == {"session_id": room, "user_id": bob, "last_read_seq": 3}
        for ws in (b, b2, a):  # a REST read reaches every member's sockets
            frame = await ws.recv()
            assert frame["type"] == "read_marker" and frame["last_read_seq"] == 3 and frame["ref"] is None
        for ws in (b2, a):
            await ws.nothing_more()
        negative = await b.request({"type": "read", "session_id": room, "seq": -1})
        assert negative["type"] == "error" and negative["code"] == "validation_error"
        foreign = await b.request({"type": "read", "session_id": uid("s"), "seq": 1})
        assert foreign["type"] == "error" and foreign["code"] == "forbidden" and foreign["ref"]
    assert (await mark(server, bob, room, -1)).status_code == 422
    assert (await mark(server, mallory, room, 1)).status_code == 403
    members = body(await server.get(f"/sessions/{room}", alice))["members"]
    assert [(m["user_id"], m["last_read_seq"]) for m in members] == [(alice, 3), (bob, 3)]  # alice's sends moved hers


async def test_unread_counts_others_text_messages_after_the_marker(
    make_server: ServerFactory, fake_llm: FakeLLM
) -> None:
    ai = await make_server(ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url)
    alice, bob = uid(), uid()
    room = await ai.room(alice, bob, ai=True)
    async with ai.ws(alice) as ws:
        first = await ai.send(alice, room, "one")
        await ws.recv_type("ai_reply")  # the assistant's reply counts once, when stored
        second = await ai.send(alice, room, "two")
        await ws.recv_type("ai_reply")
    assert await unread(ai, bob, room) == 4 and await unread(ai, alice, room) == 1  # her sends moved her marker
    await ai.http.patch(f"/message/{first['message_id']}", json={"content": "one!"}, headers=auth(alice))
    assert await unread(ai, bob, room) == 4  # an edit is not a new message
    await ai.http.delete(f"/message/{second['message_id']}", headers=auth(alice))
    assert await unread(ai, bob, room) == 3  # a deleted one no longer counts
    await ai.http.put(f"/message/{first['message_id']}/reactions/%F0%9F%91%8D", headers=auth(bob))
    assert await unread(ai, bob, room) == 3 and await unread(ai, alice, room) == 1
    async with ai.ws(bob) as ws:
        await ai.send(bob, room, "back to you")  # bob's own send moves his marker to the end
        await ws.recv_type("ai_reply")
    assert await unread(ai, bob, room) == 1  # then only the assistant's answer to him is new
    last_seq = body(await ai.get(f"/sessions/{room}", alice))["last_seq"]
    body(await mark(ai, alice, room, last_seq))
    assert await unread(ai, alice, room) == 0


async def test_typing_reaches_the_other_members_throttled(server: LiveServer) -> None:
    alice, bob, carol = uid(), uid(), uid()
    room = await server.room(alice, bob)
    async with server.ws(alice) as a, server.ws(alice) as a2, server.ws(bob) as b, server.ws(carol) as c:
        await a.send({"type": "typing", "session_id": room})
        assert await b.recv() == {"type": "typing", "session_id": room, "user_id": alice, "active": True}
        await a.send({"type": "typing", "session_id": room, "active": True})  # within 2 s: dropped
        await a.send({"type": "typing", "session_id": room, "active": False})  # always forwarded
        await a.send({"type": "typing", "session_id": room})  # false did not reset the throttle
        assert await b.recv() == {"type": "typing", "session_id": room, "user_id": alice, "active": False}
        await b.nothing_more()
        await a2.nothing_more()  # not the typist's own other sockets
        await c.nothing_more()  # nor anyone outside the session
        refused = await c.request({"type": "typing", "session_id": room})
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        await a.nothing_more()  # no answer to typing
    assert body(await server.get("/message/list", alice, params={"session_id": room, "types": "all"}))["total"] == 0


def test_the_typing_throttle_allows_one_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(chat.time, "monotonic", lambda: now[0])
    throttle = chat.TypingThrottle(2.0)
    assert throttle.allow("alice", "s") and not throttle.allow("alice", "s")
    assert throttle.allow("bob", "s") and throttle.allow("alice", "t")
    now[0] += 1.99
    assert not throttle.allow("alice", "s")
    now[0] += 0.02
    assert throttle.allow("alice", "s")


async def test_presence_follows_a_users_first_and_last_socket(server: LiveServer) -> None:
    alice, bob, carol = uid(), uid(), uid()
    room = await server.room(alice, bob)
    async with server.ws(bob, presence=True) as b, server.ws(carol, presence=True) as c:
        async with server.ws(alice):
            assert await b.recv() == {"type": "presence", "user_id": alice, "online": True}
            members = body(await server.get(f"/sessions/{room}", bob))["members"]
            assert [(m["user_id"], m["online"]) for m in members] == [(alice, True), (bob, True)]
            async with server.ws(alice):
                await b.nothing_more()  # her second socket changes nothing
            await b.nothing_more()  # nor does closing it
        assert await b.recv() == {"type": "presence", "user_id": alice, "online": False}
        await c.nothing_more()  # carol shares no session with alice


def raw_websocket(server: LiveServer, user: str) -> socket.socket:
    """A socket that completes the handshake and then neither reads nor answers pings (a dead peer)."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: the server's writes soon block
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws?token={token(user)} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


async def test_a_socket_that_drops_without_a_close_is_found_by_the_ping(make_server: ServerFactory) -> None:
    server = await make_server(server_options={"ws_ping_interval": 0.2, "ws_ping_timeout": 0.2})
    alice, bob = uid(), uid()
    await server.room(alice, bob)
    async with server.ws(bob, presence=True) as b:
        dead = await asyncio.to_thread(raw_websocket, server, alice)
        try:
            assert await b.recv() == {"type": "presence", "user_id": alice, "online": True}
            assert await b.recv() == {"type": "presence", "user_id": alice, "online": False}
        finally:
            dead.close()


async def test_a_reader_that_reads_nothing_survives_a_typing_flood(make_server: ServerFactory) -> None:
    server = await make_server(ws_send_queue=5)
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    stalled = await asyncio.to_thread(raw_websocket, server, bob)
    try:
        async with server.ws(alice) as a:
            for _ in range(5000):  # 'active: false' is never throttled: each one is forwarded
                await a.send({"type": "typing", "session_id": room, "active": False})
            await a.nothing_more()
            hub = server.app.state.services.hub
            assert [c.closing for c in hub.connections(bob)] == [False]  # replaced, never counted
            sent = await server.send(alice, room, "still there?")
            assert sent["seq"] == 1
    finally:
        stalled.close()
