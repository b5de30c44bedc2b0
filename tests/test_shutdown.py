"""Nothing stays at status 0: SIGTERM during a reply (a real server process), and records a crash left."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx

from imsvc import store
from imsvc.db import Database
from imsvc.models import Message
from tests import fakellm
from tests.conftest import ServerFactory
from tests.fakellm import FakeLLM
from tests.helpers import WsClient, auth, serve_process, token, uid

fake_llm = fakellm.fake_llm


async def read_record(database_url: str, record_id: str) -> Any:
    db = Database(database_url)
    try:
        async with db.reader() as s:
            return await store.get_record(s, record_id)
    finally:
        await db.dispose()


async def test_sigterm_during_a_reply_stores_the_partial_and_closes_1012(database_url: str, fake_llm: FakeLLM) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    fake_llm.mode = "long"
    ai = {"AI_PROVIDER": "openai", "AI_API_KEY": "k", "AI_BASE_URL": fake_llm.url, "SHUTDOWN_GRACE_S": "0.3"}
    async with serve_process(database_url, **ai) as server:
        alice, room = uid(), uid("s")
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.post("/sessions", json={"session_id": room}, headers=auth(alice))
            assert r.status_code == 201
        async with connect(f"{server.ws_url}/ws?token={token(alice)}") as conn:
            ws = WsClient(conn)
            sent = await ws.request({"type": "send_message", "session_id": room, "content": "talk"})
            first = await ws.recv_type("ai_reply_delta")
            server.proc.send_signal(signal.SIGTERM)
            text = first["delta"]
            frames: list[dict[str, Any]] = []
            try:
                async with asyncio.timeout(10):
                    while True:
                        frame = await ws.recv()
                        frames.append(frame)
                        if frame["type"] == "ai_reply_delta":
                            text = text[: frame["offset"]] + frame["delta"]
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1012
        final = frames[-1]
        assert final["type"] == "ai_reply_error" and final["error"]["code"] == "interrupted"
        assert final["message"]["msg_content"] == text and text != fake_llm.text()
        # uvicorn re-raises the signal once shut down, as a service manager expects
        assert await asyncio.wait_for(server.proc.wait(), 20) in (0, -signal.SIGTERM)
    assert final["user_message_id"] == sent["message_id"]
    rec = await read_record(database_url, final["record_id"])
    assert (rec.status, rec.finish_reason, rec.response_content) == (2, "interrupted", text)
    assert rec.ai_message_id == final["message"]["message_id"]


async def test_start_up_interrupts_records_a_crash_left(database_url: str, make_server: ServerFactory) -> None:
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            room, alice = uid("s"), uid()
            await store.create_session(s, alice, room, None, [], ai_enabled=True)
            message_id = store.new_id("msg")
            s.add(Message(message_id=message_id, session_id=room, seq=1, from_user_id=alice, msg_content="before"))
            await s.flush()
            orphan = await store.create_record(s, room, message_id, "m")
    finally:
        await db.dispose()
    server = await make_server()
    r = await server.get(f"/ai/records/{orphan}", alice)
    body = r.json()
    assert (body["status"], body["finish_reason"]) == (2, "interrupted")
