"""Delivery guarantees (SPEC §7): exactly once, in seq order, to every socket; sync fills the gaps."""

from __future__ import annotations

import asyncio
import json
import socket
from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.conftest import ServerFactory
from tests.helpers import LiveServer, WsClient, token, uid


async def test_every_socket_gets_every_message_once_in_order(server: LiveServer) -> None:
    users = [uid() for _ in range(5)]
    room = uid("s")
    await server.post("/sessions", users[0], {"session_id": room, "members": users[1:], "ai_enabled": False})
    async with AsyncExitStack() as stack:
        sockets: list[tuple[str, WsClient]] = []
        for user in users:
            for _ in range(4):
                sockets.append((user, await stack.enter_async_context(server.ws(user))))

        async def sender(index: int) -> None:
            _user, ws = sockets[index]
            for i in range(10):
                await ws.send({"type": "send_message", "session_id": room, "content": f"{index}:{i}"})

        await asyncio.gather(*(sender(i) for i in range(len(sockets))))  # 20 x 10 = 200 messages at once

        async def collect(ws: WsClient) -> list[dict[str, object]]:
            seen: list[dict[str, object]] = []
            while len(seen) < 200:
                frame = await ws.recv()
                assert frame["type"] in ("new_message", "message_sent"), frame
                seen.append(frame["message"])
            return seen

        received = await asyncio.gather(*(collect(ws) for _, ws in sockets))
        for (user, ws), messages in zip(sockets, received, strict=True):
            assert [m["seq"] for m in messages] == list(range(1, 201)), user
            await ws.nothing_more()
        contents = {m["msg_content"] for m in received[0]}
        assert contents == {f"{i}:{j}" for i in range(20) for j in range(10)}


async def test_reconnect_and_sync_gets_exactly_what_was_missed(server: LiveServer) -> None:
    alice, bob, room = uid(), uid(), uid("s")
    await server.post("/sessions", alice, {"session_id": room, "members": [bob], "ai_enabled": False})
    async with server.ws(bob) as ws:
        await server.send(alice, room, "one")
        await server.send(alice, room, "two")
        last_seen = 0
        for _ in range(2):
            last_seen = (await ws.recv_type("new_message"))["message"]["seq"]
    missed = [await server.send(alice, room, f"while away {i}") for i in range(3)]
    async with server.ws(bob) as ws:
        result = await ws.request({"type": "sync", "session_id": room, "after_seq": last_seen})
        assert [m["message_id"] for m in result["messages"]] == [m["message_id"] for m in missed]
        live = await server.send(alice, room, "back")
        assert (await ws.recv_type("new_message"))["message"]["seq"] == live["seq"] == 6


async def test_rest_send_reaches_all_the_senders_sockets(server: LiveServer) -> None:
    alice, room = uid(), uid("s")
    async with server.ws(alice) as a, server.ws(alice) as b:
        sent = await server.send(alice, room, "from a script")
        for ws in (a, b):
            assert (await ws.recv())["message"]["message_id"] == sent["message_id"]


async def test_member_added_while_connected_receives_from_then_on(server: LiveServer) -> None:
    alice, bob = uid(), uid()
    room = await server.room(alice)
    await server.send(alice, room, "before bob")
    async with server.ws(bob) as ws:
        r = await server.post(f"/sessions/{room}/members", alice, {"user_id": bob})
        assert r.status_code == 201
        added = await ws.recv()  # the MEMBER event that adds him (SPEC §10)
        assert added["type"] == "new_message" and added["message"]["msg_type"] == "MEMBER"
        assert added["message"]["seq"] == 2 and added["message"]["data"]["user_id"] == bob
        sent = await server.send(alice, room, "welcome")
        frame = await ws.recv()
        assert frame["type"] == "new_message" and frame["message"]["message_id"] == sent["message_id"]


async def test_non_members_receive_nothing(server: LiveServer) -> None:
    alice, mallory, room = uid(), uid(), uid("s")
    async with server.ws(mallory) as ws:
        await server.send(alice, room, "secret")
        await ws.nothing_more()


async def test_a_slow_socket_is_dropped_without_delaying_the_others(make_server: ServerFactory) -> None:
    server = await make_server(ws_send_queue=5)
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    big = "😀" * 5000  # 20 kB a frame
    # bob's laptop reads nothing: a small receive buffer, so that the server's writes to it soon block
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    host, port = server.url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    async with connect(
        f"{server.ws_url}/ws?token={token(bob)}", sock=raw, max_queue=1, max_size=None, compression=None
    ) as conn:
        slow = WsClient(conn)
        async with server.ws(bob) as fast:
            seq = 0
            while not any(c.closing for c in server.app.state.services.hub.connections(bob)):
                seq += 1
                assert seq <= 2000, "the slow socket was never dropped"
                await server.send(alice, room, big)
                frame = await fast.recv()  # the other socket keeps up, message after message
                assert frame["type"] == "new_message" and frame["message"]["seq"] == seq
            code, reason = await slow.closed()
            assert code == 1008 and reason == "slow consumer"
            await fast.nothing_more()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a socket matter: one database is enough
async def test_a_peer_that_reads_nothing_is_dropped_soon_after_its_queue_overflows(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close frame of 1008 cannot be written to a peer whose window is shut, so it must not be waited for:
    the socket is dropped (unregistered, its handler done) within seconds, not at the ping timeout (~40 s)."""
    server = await make_server(ws_send_queue=5)
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    hub = server.app.state.services.hub
    dropped = asyncio.Event()
    unregister = hub.unregister

    def unregister_and_tell(conn: Any) -> None:
        unregister(conn)
        if conn.user_id == bob:
            dropped.set()

    monkeypatch.setattr(hub, "unregister", unregister_and_tell)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    host, port = server.url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    uri = f"{server.ws_url}/ws?token={token(bob)}"
    # close_timeout: leaving, the client waits for a close frame the server can no longer send it
    async with connect(uri, sock=raw, max_queue=1, max_size=None, compression=None, close_timeout=0.5):
        for _ in range(2000):
            if any(c.closing for c in hub.connections(bob)):
                break
            await server.send(alice, room, "😀" * 5000)
        else:
            raise AssertionError("the socket never overflowed")
        await asyncio.wait_for(dropped.wait(), 4)


async def test_a_frame_encoded_once_reaches_sockets_of_every_encoding(server: LiveServer) -> None:
    """Fan-out compresses an event once per way of encoding it: sockets with deflate at the server's
    window, with a smaller window they asked for, and without deflate all read the same frames."""
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    encodings: list[list[ClientPerMessageDeflateFactory] | None] = [
        [ClientPerMessageDeflateFactory(client_max_window_bits=True)],
        [ClientPerMessageDeflateFactory(server_max_window_bits=9, client_max_window_bits=True)],
        None,
    ]
    async with AsyncExitStack() as stack:
        sockets = []
        for extensions in encodings:
            uri = f"{server.ws_url}/ws?token={token(bob)}"
            options: dict[str, Any] = {"extensions": extensions} if extensions else {"compression": None}
            sockets.append(await stack.enter_async_context(connect(uri, max_size=None, **options)))
        negotiated = [s.response.headers.get("Sec-WebSocket-Extensions") for s in sockets]
        assert negotiated[0] is not None and "server_no_context_takeover" in negotiated[0]
        assert negotiated[1] is not None and "server_max_window_bits=9" in negotiated[1]
        assert negotiated[2] is None
        contents = [f"{n} " + "é" * n * 300 for n in range(6)]  # frames under and over COMPRESS_FROM
        for content in contents:
            await server.send(alice, room, content)
        for sock in sockets:
            got = []
            while len(got) < len(contents):
                async with asyncio.timeout(5):
                    frame = json.loads(await sock.recv())
                if frame["type"] == "new_message":
                    got.append(frame["message"]["msg_content"])
            assert got == contents
