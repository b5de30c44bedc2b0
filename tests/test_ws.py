"""The WebSocket protocol: authentication and close codes, every frame type, every bad frame."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from imsvc.app import create_app
from imsvc.schemas import INBOUND_TYPES
from imsvc.settings import Settings
from tests.conftest import ServerFactory
from tests.helpers import SECRET, WAIT, LiveServer, WsClient, serve_app, token, uid


async def close_of(server: LiveServer, path: str, headers: dict[str, str] | None = None) -> tuple[int | None, str]:
    async with connect(f"{server.ws_url}{path}", additional_headers=headers) as conn:
        return await WsClient(conn).closed()


async def test_missing_or_bad_token_closes_4401(server: LiveServer) -> None:
    code, reason = await close_of(server, "/ws")
    assert code == 4401 and reason
    assert (await close_of(server, "/ws?token=garbage"))[0] == 4401
    expired = token("alice", ttl=-5)
    assert (await close_of(server, f"/ws?token={expired}"))[0] == 4401
    assert (await close_of(server, f"/ws?token={token('ai_bot')}"))[0] == 4401  # nobody signs in as the bot


async def test_token_in_header(server: LiveServer) -> None:
    alice = uid()
    headers = {"Authorization": f"Bearer {token(alice)}"}
    async with connect(f"{server.ws_url}/ws", additional_headers=headers) as conn:
        pong = await WsClient(conn).request({"type": "ping"})
    assert pong["type"] == "pong"


async def test_path_user_must_match_token(server: LiveServer) -> None:
    alice = uid()
    assert (await close_of(server, f"/ws/{uid()}?token={token(alice)}"))[0] == 4403
    async with server.ws(alice, f"/ws/{alice}") as ws:
        assert (await ws.request({"type": "ping"}))["type"] == "pong"


async def test_ping_echoes_ref(server: LiveServer) -> None:
    async with server.ws(uid()) as ws:
        await ws.send({"type": "ping", "id": 7})
        assert await ws.recv() == {"type": "pong", "ref": 7}
        await ws.send({"type": "ping"})
        assert (await ws.recv())["type"] == "pong"


async def test_send_message_answers_and_fans_out(server: LiveServer) -> None:
    alice, bob, room = uid(), uid(), uid("s")
    await server.post("/sessions", alice, {"session_id": room, "members": [bob], "ai_enabled": False})
    async with server.ws(alice) as phone, server.ws(alice) as laptop, server.ws(bob) as bob_ws:
        sent = await phone.request({"type": "send_message", "session_id": room, "content": "hi", "client_msg_id": "k"})
        assert sent["type"] == "message_sent" and sent["duplicate"] is False and sent["client_msg_id"] == "k"
        assert sent["content"] == "hi" and sent["message_id"] == sent["message"]["message_id"]
        assert sent["message"]["seq"] == 1
        for other in (laptop, bob_ws):
            frame = await other.recv()
            assert frame == {"type": "new_message", "message": sent["message"]}
        await phone.nothing_more()  # the sender's own socket gets no new_message


async def test_send_without_session_uses_own_session(server: LiveServer) -> None:
    alice = uid()
    async with server.ws(alice) as ws:
        sent = await ws.request({"type": "send_message", "content": "note to self"})
    assert sent["message"]["session_id"] == alice


async def test_duplicate_send_answers_original_and_fans_out_once(server: LiveServer) -> None:
    alice, room = uid(), uid("s")
    async with server.ws(alice) as ws, server.ws(alice) as other:
        frame = {"type": "send_message", "session_id": room, "content": "x", "client_msg_id": "dup"}
        first = await ws.request(dict(frame))
        again = await ws.request(dict(frame))
        assert again["duplicate"] is True and again["message"] == first["message"]
        assert (await other.recv_type("new_message"))["message"]["seq"] == 1
        await other.nothing_more()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{nope", "invalid_json"),
        ("[1, 2]", "bad_request"),
        ('"text"', "bad_request"),
        ('{"content": "no type"}', "bad_request"),
        ('{"type": 5}', "bad_request"),
        ('{"type": "dance", "id": "r1"}', "unknown_type"),
        ('{"type": "send_message", "id": "r1"}', "validation_error"),
        ('{"type": "send_message", "content": "", "id": "r1"}', "validation_error"),
        ('{"type": "send_message", "content": "   ", "id": "r1"}', "validation_error"),
        ('{"type": "send_message", "content": "' + "x" * 5001 + '", "id": "r1"}', "validation_error"),
        ('{"type": "send_message", "content": "x", "session_id": "bad id", "id": "r1"}', "validation_error"),
        ('{"type": "sync", "session_id": "s", "id": "r1"}', "validation_error"),
        ('{"type": "sync", "session_id": "s", "after_seq": -1, "id": "r1"}', "validation_error"),
        ('{"type": "ai_cancel", "id": "r1"}', "validation_error"),
        ('{"type": "sync", "session_id": "s", "after_seq": 9223372036854775808, "id": "r1"}', "validation_error"),
        ('{"type": "sync", "session_id": "s", "after_seq": "5", "id": "r1"}', "validation_error"),  # JSON is typed
        ('{"type": "sync", "session_id": "s", "after_seq": true, "id": "r1"}', "validation_error"),
        ('{"type": "send_message", "content": "a\\u0000b", "id": "r1"}', "validation_error"),
        ('{"type": "send_message", "content": "\\u0007", "id": "r1"}', "validation_error"),
        ('{"type": "send_message", "content": "x", "client_msg_id": "\\u0000", "id": "r1"}', "validation_error"),
        ('{"type": "ai_cancel", "record_id": "record\\u0000", "id": "r1"}', "validation_error"),
        ('{"type": "ping", "pad": ' + "[" * 5000 + "]" * 5000 + "}", "bad_request"),
        ("[" * 30000 + "]" * 30000, "bad_request"),
        ('{"type": "ping", "id": ' + "9" * 5000 + "}", "invalid_json"),  # past Python's 4300 digits
    ],
)
async def test_bad_frames_get_error_and_keep_the_connection(server: LiveServer, raw: str, code: str) -> None:
    async with server.ws(uid()) as ws:
        await ws.send(raw)
        error = await ws.recv()
        assert error["type"] == "error" and error["code"] == code and error["message"]
        if '"id": "r1"' in raw:
            assert error["ref"] == "r1"
        assert (await ws.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize("kind", sorted(INBOUND_TYPES))
async def test_an_id_that_cannot_be_echoed_is_answered_without_ref(server: LiveServer, kind: str) -> None:
    alice = uid()
    room = await server.room(alice)
    fields = {"type": kind, "session_id": room, "content": "x", "after_seq": 0, "record_id": "record_x"}
    async with server.ws(alice) as ws:
        for bad_id in ("\ud800", "a\udfffb"):  # sent as JSON escapes: a lone surrogate cannot be sent back
            await ws.send(json.dumps({**fields, "id": bad_id}))
            error = await ws.recv()
            assert error == {"type": "error", "code": "validation_error", "message": error["message"], "ref": None}
            assert error["message"].startswith("id")
        assert (await ws.request({"type": "ping"}))["type"] == "pong"  # still open
    assert (await server.get("/message/list", alice, params={"session_id": room})).json()["total"] == 0


async def test_binary_frame_of_json_is_read(server: LiveServer) -> None:
    async with server.ws(uid()) as ws:
        await ws.conn.send(json.dumps({"type": "ping", "id": "b"}).encode())
        assert await ws.recv() == {"type": "pong", "ref": "b"}


async def test_non_member_is_forbidden(server: LiveServer) -> None:
    owner, mallory, room = uid(), uid(), uid("s")
    await server.send(owner, room, "private")
    async with server.ws(mallory) as ws:
        for frame in (
            {"type": "send_message", "session_id": room, "content": "hi"},
            {"type": "sync", "session_id": room, "after_seq": 0},
            {"type": "sync", "session_id": uid("nosuch"), "after_seq": 0},
        ):
            answer = await ws.request(frame)
            assert answer["type"] == "error" and answer["code"] == "forbidden"


async def test_frame_of_exactly_64_kib_is_accepted_one_more_byte_closes_1009(server: LiveServer) -> None:
    async with server.ws(uid()) as ws:
        head = '{"type": "ping", "id": "big", "pad": "'
        frame = head + "x" * (65536 - len(head) - 2) + '"}'
        assert len(frame.encode()) == 65536
        await ws.send(frame)
        assert (await ws.recv())["type"] == "pong"
        await ws.send(frame[:-2] + 'x"}')
        assert (await ws.closed())[0] == 1009


async def test_multibyte_frame_size_counts_bytes(server: LiveServer) -> None:
    async with server.ws(uid()) as ws:
        await ws.send('{"type": "ping", "pad": "' + "é" * 33000 + '"}')
        assert (await ws.closed())[0] == 1009


async def test_connections_over_the_limit_close_1013(make_server: ServerFactory) -> None:
    server = await make_server(websocket_max_connections=2)
    async with server.ws(uid()) as a, server.ws(uid()) as b:
        await a.nothing_more()
        await b.nothing_more()
        assert (await close_of(server, f"/ws?token={token(uid())}"))[0] == 1013
    async with server.ws(uid()) as c:  # places are freed on disconnect
        await c.nothing_more()


async def test_http_upgrade_to_unknown_path_is_refused(server: LiveServer) -> None:
    with pytest.raises(InvalidStatus):
        async with connect(f"{server.ws_url}/nowhere?token={token(uid())}"):
            pass


async def test_sync_returns_missed_messages_oldest_first(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    for i in range(5):
        await server.send(alice, room, f"m{i}")
    async with server.ws(alice) as ws:
        result = await ws.request({"type": "sync", "session_id": room, "after_seq": 2})
    assert result["type"] == "sync_result" and result["session_id"] == room and result["has_more"] is False
    assert [m["seq"] for m in result["messages"]] == [3, 4, 5]


async def test_sync_pages_at_200(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    async with server.ws(alice) as ws:
        for i in range(205):
            await ws.send({"type": "send_message", "session_id": room, "content": f"m{i}"})
        for _ in range(205):
            await ws.recv_type("message_sent")
        first = await ws.request({"type": "sync", "session_id": room, "after_seq": 0})
        assert len(first["messages"]) == 200 and first["has_more"] is True
        rest = await ws.request({"type": "sync", "session_id": room, "after_seq": 200})
        assert [m["seq"] for m in rest["messages"]] == [201, 202, 203, 204, 205] and rest["has_more"] is False


async def test_binary_frames_follow_the_same_rules(server: LiveServer) -> None:
    async with server.ws(uid()) as ws:
        await ws.conn.send(b"\xff\xfe not utf-8")
        error = await ws.recv()
        assert error["type"] == "error" and error["code"] == "invalid_json"
        await ws.conn.send(b" " * 65537)
        assert (await ws.closed())[0] == 1009


async def test_a_server_without_imsvcs_websocket_protocol_closes_sockets_1011(database_url: str) -> None:
    """Frames are written through imsvc's protocol class; another one is refused with a clear close."""
    settings = Settings(_env_file=None, database_url=database_url, jwt_secret=SECRET, migrate_on_start=False)
    async with (
        serve_app(create_app(settings), ws="websockets-sansio") as (address, _),
        connect(f"ws://{address}/ws?token={token(uid())}", open_timeout=WAIT) as conn,
    ):
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(conn.recv(), WAIT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "server misconfigured")
