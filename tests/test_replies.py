"""AI replies through the real SDK to a local model server: streaming, records, failures, cancel, resume."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import update

from imsvc import store
from imsvc.db import Database
from imsvc.models import ChatSession, Message
from tests import fakellm
from tests.conftest import ServerFactory
from tests.dbproxy import db_proxy
from tests.fakellm import FakeLLM
from tests.helpers import LiveServer, WsClient, uid

fake_llm = fakellm.fake_llm


@pytest.fixture
async def ai(make_server: ServerFactory, fake_llm: FakeLLM) -> LiveServer:
    return await make_server(
        ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_model="fake-model", ai_timeout_s=20
    )


async def reply_frames(ws: WsClient, record_id: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The deltas of a reply (of `record_id`, or the first one seen) and its final frame."""
    deltas: list[dict[str, Any]] = []
    while True:
        frame = await ws.recv()
        if frame["type"] not in ("ai_reply_start", "ai_reply_delta", "ai_reply", "ai_reply_error"):
            continue
        record_id = record_id or frame["record_id"]
        if frame["record_id"] != record_id:
            continue
        if frame["type"] == "ai_reply_delta":
            deltas.append(frame)
        elif frame["type"] in ("ai_reply", "ai_reply_error"):
            return deltas, frame


def joined(deltas: list[dict[str, Any]]) -> str:
    text = ""
    for d in deltas:
        assert d["offset"] == len(text), "a delta left a gap or overlapped"
        text += d["delta"]
    return text


async def record(server: LiveServer, user: str, record_id: str) -> dict[str, Any]:
    r = await server.get(f"/ai/records/{record_id}", user)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_reply_streams_to_every_member_and_is_stored(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "slow"  # 50 ms between tokens: each arrives as its own delta
    alice, bob = uid(), uid()
    room = await ai.room(alice, bob, ai=True)
    async with ai.ws(alice) as a, ai.ws(bob) as b:
        sent = await a.request({"type": "send_message", "session_id": room, "content": "hello bot"})
        assert sent["type"] == "message_sent"
        start = await a.recv()
        assert start == {
            "type": "ai_reply_start",
            "record_id": start["record_id"],
            "session_id": room,
            "user_message_id": sent["message_id"],
        }
        deltas, final = await reply_frames(a, start["record_id"])
        assert len(deltas) >= 2 and joined(deltas) == fake_llm.reply
        assert final["type"] == "ai_reply" and final["finish_reason"] == "stop"
        assert final["content"] == fake_llm.reply == final["message"]["msg_content"]
        assert final["message_id"] == final["message"]["message_id"] and final["user_message_id"] == sent["message_id"]
        assert final["message"]["seq"] == 2 and final["message"]["from_user_id"] == "ai_bot"
        assert (await b.recv())["type"] == "new_message"
        b_deltas, b_final = await reply_frames(b, start["record_id"])
        assert joined(b_deltas) == fake_llm.reply and b_final == final
        await b.nothing_more()  # the AI message never comes as new_message too
    rec = await record(ai, bob, start["record_id"])
    assert (rec["status"], rec["finish_reason"], rec["model"]) == (1, "stop", "fake-model")
    assert rec["response_content"] == fake_llm.reply and rec["ai_message_id"] == final["message_id"]
    assert rec["duration_ms"] >= rec["first_token_ms"] >= 0 and rec["prompt_tokens"] and rec["completion_tokens"]
    assert rec["user_message_id"] == sent["message_id"] and rec["error_message"] is None
    request = json.loads(rec["request_content"])
    assert request["messages"][-1]["content"].endswith("hello bot") and request["stream"] is True
    assert request == fake_llm.requests[-1]  # the record stores exactly what the model was sent
    listing = (await ai.get("/message/list", alice, params={"session_id": room, "after_seq": 0})).json()
    assert [m["from_user_id"] for m in listing["messages"]] == [alice, "ai_bot"]
    sessions = (await ai.get("/sessions", alice)).json()["sessions"]
    assert sessions[0]["last_message"]["from_user_id"] == "ai_bot"


async def test_rest_send_returns_the_record_and_a_duplicate_starts_nothing(ai: LiveServer, fake_llm: FakeLLM) -> None:
    alice = uid()
    room = await ai.room(alice, ai=True)
    body = {"session_id": room, "content": "q", "client_msg_id": "c"}
    first = (await ai.post("/message/send", alice, body)).json()
    assert first["ai_record_id"].startswith("record_")
    again = (await ai.post("/message/send", alice, body)).json()
    assert again["duplicate"] is True and again["ai_record_id"] == first["ai_record_id"]
    records = (await ai.get("/ai/records", alice, params={"session_id": room})).json()["records"]
    assert [r["record_id"] for r in records] == [first["ai_record_id"]]
    assert len(fake_llm.requests) <= 1


async def test_session_without_ai_gets_no_reply(ai: LiveServer, fake_llm: FakeLLM) -> None:
    alice = uid()
    room = await ai.room(alice, ai=False)
    sent = await ai.send(alice, room, "quiet")
    assert sent["ai_record_id"] is None
    async with ai.ws(alice) as ws:
        await ws.nothing_more()
    assert fake_llm.requests == []


async def test_context_is_the_history_in_order_with_roles(make_server: ServerFactory, fake_llm: FakeLLM) -> None:
    server = await make_server(
        ai_provider="openai",
        ai_api_key="k",
        ai_base_url=fake_llm.url,
        ai_system_prompt="be brief",
        ai_context_messages=4,
        ai_max_tokens=55,
    )
    alice, bob = uid(), uid()
    room = await server.room(alice, bob, ai=False)
    for user, text in [(alice, "one"), (bob, "two"), (alice, "three")]:
        await server.send(user, room, text)
    r = await server.post("/sessions", alice, {"session_id": uid("s"), "ai_enabled": True})
    solo = r.json()["session_id"]
    async with server.ws(alice) as ws:
        await server.send(alice, solo, "first")
        await reply_frames(ws)
        await server.send(alice, solo, "second")
        await reply_frames(ws)
    last = fake_llm.requests[-1]
    assert last["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": fake_llm.reply},
        {"role": "user", "content": "second"},
    ]
    assert last["stream"] is True and last["stream_options"] == {"include_usage": True}
    assert last["max_tokens"] == 55 and last["model"] == "gpt-4o-mini"


async def test_group_context_prefixes_authors_and_honours_limits(make_server: ServerFactory, fake_llm: FakeLLM) -> None:
    server = await make_server(
        ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_context_messages=3, ai_context_chars=30
    )
    alice, bob = uid("a"), uid("b")
    room = await server.room(alice, bob, ai=False)
    for user, text in [(alice, "m1"), (bob, "m2"), (alice, "m3")]:
        await server.send(user, room, text)
    async with server.ws(alice) as ws:
        await server.post(f"/sessions/{room}/members", alice, {"user_id": uid()})  # three humans now
        # turn the assistant on by regenerating in a fresh AI session instead: the group must have AI
        group = await server.room(alice, bob, ai=True)
        for user, text in [(alice, "m1"), (bob, "m2"), (alice, "m3")]:
            sent = await server.send(user, group, text)
            await reply_frames(ws, sent["ai_record_id"])
    messages = fake_llm.requests[-1]["messages"]
    # 3 messages at most, 30 characters at most (the last, "<alice>: m3", always kept)
    history = messages[1:]
    assert history[-1] == {"role": "user", "content": f"{alice}: m3"}
    assert len(history) <= 3 and sum(len(m["content"]) for m in history) <= 30


async def test_the_assistant_as_a_member_is_not_a_human(ai: LiveServer, fake_llm: FakeLLM) -> None:
    alice = uid()
    room = await ai.room(alice, "ai_bot", ai=True)
    async with ai.ws(alice) as ws:
        sent = await ai.send(alice, room, "hi")
        await reply_frames(ws, sent["ai_record_id"])
    assert fake_llm.requests[-1]["messages"][1:] == [{"role": "user", "content": "hi"}]  # no "alice: " prefix


async def test_replies_in_one_session_come_in_order(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "slow"
    alice = uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        await ws.send({"type": "send_message", "session_id": room, "content": "first"})
        await ws.send({"type": "send_message", "session_id": room, "content": "second"})
        order: list[tuple[str, str]] = []
        while len([o for o in order if o[0] == "ai_reply"]) < 2:
            frame = await ws.recv()
            if frame["type"] in ("message_sent", "ai_reply_start", "ai_reply"):
                order.append((frame["type"], frame.get("user_message_id") or frame["message"]["msg_content"]))
    sent_ids = [f[1] for f in order if f[0] == "message_sent"]
    assert sent_ids == ["first", "second"]
    starts = [f[1] for f in order if f[0] == "ai_reply_start"]
    replies = [f[1] for f in order if f[0] == "ai_reply"]
    assert starts == replies and len(starts) == 2
    assert order.index(("ai_reply", starts[0])) < order.index(("ai_reply_start", starts[1]))
    second_context = [m["content"] for m in fake_llm.requests[1]["messages"][1:]]
    assert second_context == ["first", fake_llm.text(), "second"] or second_context == ["first", "second"]


async def test_429_once_is_retried(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "429_once"
    alice = uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        sent = await ai.send(alice, room, "hi")
        deltas, final = await reply_frames(ws, sent["ai_record_id"])
    assert final["type"] == "ai_reply" and joined(deltas) == fake_llm.reply
    assert len(fake_llm.requests) == 2


async def test_500_before_the_first_token_fails_without_a_message(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "500"
    alice = uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        sent = await ai.send(alice, room, "hi")
        deltas, final = await reply_frames(ws, sent["ai_record_id"])
    assert deltas == [] and final["type"] == "ai_reply_error"
    assert final["error"]["code"] == "provider_error" and final["message"] is None
    assert final["user_message_id"] == sent["message_id"]
    assert len(fake_llm.requests) == 3
    rec = await record(ai, alice, sent["ai_record_id"])
    assert (rec["status"], rec["finish_reason"], rec["response_content"], rec["ai_message_id"]) == (
        2,
        "error",
        None,
        None,
    )
    assert rec["first_token_ms"] is None and rec["duration_ms"] is not None and "500" in rec["error_message"]


@pytest.mark.parametrize("mode", ["cut", "short"])  # the connection drops; the body ends without [DONE]
async def test_cut_stream_stores_the_partial_reply(ai: LiveServer, fake_llm: FakeLLM, mode: str) -> None:
    fake_llm.mode = mode
    alice = uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        sent = await ai.send(alice, room, "hi")
        deltas, final = await reply_frames(ws, sent["ai_record_id"])
    partial = joined(deltas)
    assert partial and final["type"] == "ai_reply_error" and final["error"]["code"] == "provider_error"
    assert final["message"]["msg_content"] == partial and final["message"]["from_user_id"] == "ai_bot"
    rec = await record(ai, alice, sent["ai_record_id"])
    assert (rec["status"], rec["finish_reason"], rec["response_content"]) == (2, "error", partial)
    assert rec["ai_message_id"] == final["message"]["message_id"] and rec["first_token_ms"] is not None
    assert len(fake_llm.requests) == 1  # no retry once the stream had started


async def test_timeout_stores_the_partial_reply(make_server: ServerFactory, fake_llm: FakeLLM) -> None:
    server = await make_server(ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_timeout_s=0.5)
    fake_llm.mode = "hang"
    alice = uid()
    room = await server.room(alice, ai=True)
    async with server.ws(alice) as ws:
        sent = await server.send(alice, room, "hi")
        deltas, final = await reply_frames(ws, sent["ai_record_id"])
    assert final["type"] == "ai_reply_error" and final["error"]["code"] == "timeout"
    assert final["message"]["msg_content"] == joined(deltas) != ""
    rec = await record(server, alice, sent["ai_record_id"])
    assert (rec["status"], rec["finish_reason"]) == (2, "timeout")


async def test_cancel_by_frame_stores_the_partial_reply(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "long"
    alice, bob = uid(), uid()
    room = await ai.room(alice, bob, ai=True)
    async with ai.ws(alice) as a, ai.ws(bob) as b:
        sent = await ai.send(alice, room, "talk a lot")
        record_id = sent["ai_record_id"]
        seen = await a.recv_type("ai_reply_delta")
        await b.send({"type": "ai_cancel", "record_id": record_id, "id": "x"})  # any member may stop it
        deltas, final = await reply_frames(a, record_id)
        text = seen["delta"] + "".join(d["delta"] for d in deltas)
        assert final["type"] == "ai_reply" and final["finish_reason"] == "cancelled"
        assert final["content"] == text == final["message"]["msg_content"] != fake_llm.text()
        _, b_final = await reply_frames(b, record_id)
        assert b_final == final  # no direct answer to a successful cancel, the ai_reply instead
        again = await b.request({"type": "ai_cancel", "record_id": record_id})
        assert again["type"] == "error" and again["code"] == "conflict"
    rec = await record(ai, alice, record_id)
    assert (rec["status"], rec["finish_reason"], rec["response_content"]) == (3, "cancelled", text)
    r = await ai.post(f"/ai/records/{record_id}/cancel", alice)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


async def test_cancel_over_rest_and_its_errors(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "long"
    alice, mallory = uid(), uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        sent = await ai.send(alice, room, "go")
        await ws.recv_type("ai_reply_delta")
        assert (await ai.post(f"/ai/records/{sent['ai_record_id']}/cancel", mallory)).status_code == 404
        assert (await ai.post("/ai/records/record_nope/cancel", alice)).status_code == 404
        r = await ai.post(f"/ai/records/{sent['ai_record_id']}/cancel", alice)
        assert r.status_code == 202 and r.json()["record_id"] == sent["ai_record_id"]
        _, final = await reply_frames(ws, sent["ai_record_id"])
    assert final["finish_reason"] == "cancelled"
    async with ai.ws(alice) as ws:
        error = await ws.request({"type": "ai_cancel", "record_id": "record_nope"})
        assert error["type"] == "error" and error["code"] == "not_found"


async def test_cancel_while_queued_ends_with_empty_content(make_server: ServerFactory, fake_llm: FakeLLM) -> None:
    server = await make_server(ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_max_concurrency=1)
    fake_llm.mode = "long"
    alice = uid()
    busy_room, room = await server.room(alice, ai=True), await server.room(alice, ai=True)
    async with server.ws(alice) as ws:
        first = await server.send(alice, busy_room, "occupy the only slot")
        await ws.recv_type("ai_reply_delta")
        queued = await server.send(alice, room, "wait your turn")
        r = await server.post(f"/ai/records/{queued['ai_record_id']}/cancel", alice)
        assert r.status_code == 202
        _, final = await reply_frames(ws, queued["ai_record_id"])
        assert final == {
            "type": "ai_reply",
            "message_id": None,
            "content": "",
            "user_message_id": queued["message_id"],
            "record_id": queued["ai_record_id"],
            "session_id": room,
            "message": None,
            "finish_reason": "cancelled",
        }
        await server.post(f"/ai/records/{first['ai_record_id']}/cancel", alice)
    rec = await record(server, alice, queued["ai_record_id"])
    assert (rec["status"], rec["response_content"], rec["first_token_ms"]) == (3, None, None)


async def test_past_the_queue_replies_are_busy(make_server: ServerFactory, fake_llm: FakeLLM) -> None:
    server = await make_server(
        ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_max_concurrency=1, ai_max_queue=0
    )
    fake_llm.mode = "long"
    alice = uid()
    first_room, second_room = await server.room(alice, ai=True), await server.room(alice, ai=True)
    async with server.ws(alice) as ws:
        first = await server.send(alice, first_room, "one")
        await ws.recv_type("ai_reply_delta")
        second = await server.send(alice, second_room, "two")
        _, final = await reply_frames(ws, second["ai_record_id"])
        assert final["type"] == "ai_reply_error" and final["error"]["code"] == "busy" and final["message"] is None
        await server.post(f"/ai/records/{first['ai_record_id']}/cancel", alice)
    rec = await record(server, alice, second["ai_record_id"])
    assert rec["status"] == 2


async def test_reconnect_mid_reply_resumes_with_snapshot_and_no_gap(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "long"
    alice = uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        sent = await ws.request({"type": "send_message", "session_id": room, "content": "tell me"})
        await ws.recv_type("ai_reply_delta")
    async with ai.ws(alice) as ws:  # the laptop was closed and reopened
        result = await ws.request({"type": "sync", "session_id": room, "after_seq": sent["message"]["seq"]})
        assert result["type"] == "sync_result" and result["messages"] == []
        snapshot = await ws.recv()
        assert snapshot["type"] == "ai_reply_snapshot" and snapshot["user_message_id"] == sent["message_id"]
        text = snapshot["content"]
        assert text
        deltas, final = await reply_frames(ws, snapshot["record_id"])
        for d in deltas:  # merge by offset: overlap allowed, gaps not
            assert d["offset"] <= len(text), "gap after the snapshot"
            text = text[: d["offset"]] + d["delta"]
        assert text == final["content"] == fake_llm.text()


async def test_sse_stream_of_a_running_and_a_finished_reply(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "slow"
    alice, mallory = uid(), uid()
    room = await ai.room(alice, ai=True)
    sent = await ai.send(alice, room, "stream me")
    url = f"/ai/records/{sent['ai_record_id']}/stream"

    async def events(user: str) -> list[tuple[str, dict[str, Any]]]:
        found: list[tuple[str, dict[str, Any]]] = []
        async with ai.http.stream("GET", url, headers={"Authorization": f"Bearer {_tok(user)}"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            kind = ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    found.append((kind, json.loads(line[6:])))
        return found

    live = await events(alice)
    assert live[0][0] == "snapshot" and live[-1][0] == "done"
    text = live[0][1]["content"]
    for kind, data in live[1:-1]:
        assert kind == "delta" and data["offset"] <= len(text)
        text = text[: data["offset"]] + data["delta"]
    assert text == fake_llm.reply == live[-1][1]["content"]
    finished = await events(alice)
    assert [k for k, _ in finished] == ["snapshot", "done"] and finished[0][1]["content"] == fake_llm.reply
    assert finished[1][1]["message"]["msg_content"] == fake_llm.reply and finished[1][1]["finish_reason"] == "stop"
    assert (await ai.get(url, mallory)).status_code == 404
    assert (await ai.get(url, None)).status_code == 401


async def test_sse_of_a_failed_reply_ends_with_error(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "500"
    alice = uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        sent = await ai.send(alice, room, "x")
        await reply_frames(ws, sent["ai_record_id"])
    r = await ai.get(f"/ai/records/{sent['ai_record_id']}/stream", alice)
    assert r.text.startswith("event: snapshot\n") and "event: error\n" in r.text and "provider_error" in r.text


async def test_regenerate(ai: LiveServer, fake_llm: FakeLLM) -> None:
    alice = uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        sent = await ai.send(alice, room, "again please")
        _, first = await reply_frames(ws, sent["ai_record_id"])
        r = await ai.post("/ai/regenerate", alice, {"message_id": sent["message_id"]})
        assert r.status_code == 202 and r.json()["status"] == 0 and r.json()["user_message_id"] == sent["message_id"]
        _, second = await reply_frames(ws, r.json()["record_id"])
    assert second["message"]["seq"] == 3 and second["user_message_id"] == sent["message_id"]
    assert [m["content"] for m in fake_llm.requests[-1]["messages"][1:]] == ["again please"]
    bot = await ai.post("/ai/regenerate", alice, {"message_id": first["message_id"]})
    assert bot.status_code == 422
    assert (await ai.post("/ai/regenerate", alice, {"message_id": "msg_nope"})).status_code == 404
    assert (await ai.post("/ai/regenerate", uid(), {"message_id": sent["message_id"]})).status_code == 404
    assert (await ai.post("/ai/regenerate", alice, {})).status_code == 422
    quiet = await ai.room(alice, ai=False)
    plain = await ai.send(alice, quiet, "no ai here")
    assert (await ai.post("/ai/regenerate", alice, {"message_id": plain["message_id"]})).status_code == 422


async def test_records_listing_and_access(ai: LiveServer, fake_llm: FakeLLM) -> None:
    alice, mallory = uid(), uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        ids = []
        for text in ("a", "b"):
            sent = await ai.send(alice, room, text)
            await reply_frames(ws, sent["ai_record_id"])
            ids.append(sent["ai_record_id"])
    listing = (await ai.get("/ai/records", alice, params={"session_id": room, "limit": 1})).json()
    assert [r["record_id"] for r in listing["records"]] == [ids[1]]
    assert (await ai.get("/ai/records", mallory, params={"session_id": room})).status_code == 403
    assert (await ai.get("/ai/records", alice, params={"session_id": room, "limit": 0})).status_code == 422
    assert (await ai.get(f"/ai/records/{ids[0]}", mallory)).status_code == 404


async def test_echo_provider_streams_offline(server: LiveServer) -> None:
    alice = uid()
    async with server.ws(alice) as ws:
        await ws.request({"type": "send_message", "content": "hello world"})
        deltas, final = await reply_frames(ws)
    assert joined(deltas) == "Echo: hello world" == final["content"]
    assert (await server.get("/health", None)).json()["ai_provider"] == "echo"


def _tok(user: str) -> str:
    from tests.helpers import token

    return token(user)


async def test_a_member_added_mid_reply_receives_the_rest(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "slow"  # 50 ms between tokens: bob joins well before the end
    alice, bob = uid(), uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as a, ai.ws(bob) as b:
        sent = await ai.send(alice, room, "go on")
        await a.recv_type("ai_reply_delta")
        assert (await ai.post(f"/sessions/{room}/members", alice, {"user_id": bob})).status_code == 201
        added = await b.recv()
        assert added["type"] == "new_message" and added["message"]["msg_type"] == "MEMBER"
        delta = await b.recv()
        assert delta["type"] == "ai_reply_delta" and delta["record_id"] == sent["ai_record_id"]
        sync = await b.request({"type": "sync", "session_id": room, "after_seq": 0})
        snapshot = await b.recv_type("ai_reply_snapshot")
        assert [m["seq"] for m in sync["messages"]] == [1, 2] and snapshot["record_id"] == sent["ai_record_id"]
        _, final = await reply_frames(b, sent["ai_record_id"])
        assert final["type"] == "ai_reply" and final["content"] == fake_llm.text()
        assert (await reply_frames(a, sent["ai_record_id"]))[1] == final  # (read, or closing a waits its timeout)


async def test_a_member_added_while_a_reply_is_queued_receives_all_of_it(ai: LiveServer, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "hang"  # the first reply holds the session's turn until released
    alice, bob = uid(), uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as a, ai.ws(bob) as b:
        first = await ai.send(alice, room, "first")
        await a.recv_type("ai_reply_delta")
        second = await ai.send(alice, room, "second")  # queued behind the first
        assert (await ai.post(f"/sessions/{room}/members", alice, {"user_id": bob})).status_code == 201
        fake_llm.release.set()
        _, end_first = await reply_frames(b, first["ai_record_id"])
        assert end_first["type"] == "ai_reply"
        start = await b.recv_type("ai_reply_start")
        assert start["record_id"] == second["ai_record_id"]
        deltas, end_second = await reply_frames(b, second["ai_record_id"])
        assert joined(deltas) == end_second["content"] and end_second["type"] == "ai_reply"


async def test_a_reply_ending_while_the_database_is_unreachable_is_stored_when_it_returns(
    make_server: ServerFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the database is cut through a TCP proxy: PostgreSQL only")
    async with db_proxy(database_url) as proxy:
        ai = await make_server(
            database_url=proxy.url, ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_timeout_s=20
        )
        fake_llm.mode = "hang"
        alice = uid()
        room = await ai.room(alice, ai=True)
        async with ai.ws(alice) as ws:
            sent = await ai.send(alice, room, "tell me")
            await ws.recv_type("ai_reply_delta")
            proxy.cut()
            fake_llm.release.set()  # the reply ends now, with the database gone

            async def retried() -> bool:
                text = (await ai.get("/metrics", None)).text
                return "imsvc_ai_reply_store_retries_total 0.0" not in text

            async with asyncio.timeout(10):
                while not await retried():  # noqa: ASYNC110 - the server's own count is the only signal outside it
                    await asyncio.sleep(0.05)
            record_meanwhile = await ai.get(f"/ai/records/{sent['ai_record_id']}", alice)
            assert record_meanwhile.status_code == 503 and record_meanwhile.json()["error"]["code"] == "not_ready"
            proxy.restore()
            _, final = await reply_frames(ws, sent["ai_record_id"])
        assert final["type"] == "ai_reply" and final["content"] == fake_llm.text("hang")
        assert final["message"]["msg_content"] == final["content"]
        rec = await record(ai, alice, sent["ai_record_id"])
        assert (rec["status"], rec["response_content"]) == (1, final["content"])


async def test_a_retry_after_a_lost_commit_answer_starts_the_reply_nobody_runs(
    ai: LiveServer, fake_llm: FakeLLM, database_url: str
) -> None:
    alice = uid()
    room = await ai.room(alice, ai=True)
    db = Database(database_url)
    try:  # what a commit stored before its answer was lost: the message and its record at status 0
        async with db.transaction() as s:
            message_id = store.new_id("msg")
            s.add(
                Message(
                    message_id=message_id,
                    session_id=room,
                    seq=1,
                    from_user_id=alice,
                    msg_content="hi",
                    client_msg_id="c-lost",
                )
            )
            await s.execute(update(ChatSession).where(ChatSession.session_id == room).values(last_seq=1))
            record_id = await store.create_record(s, room, message_id, "fake-model")
    finally:
        await db.dispose()
    async with ai.ws(alice) as ws:
        again = await ai.post("/message/send", alice, {"session_id": room, "content": "hi", "client_msg_id": "c-lost"})
        assert again.status_code == 200 and again.json()["duplicate"] is True
        assert again.json()["ai_record_id"] == record_id
        _, final = await reply_frames(ws, record_id)
    assert final["type"] == "ai_reply" and final["content"] == fake_llm.text()
    assert (await record(ai, alice, record_id))["status"] == 1


async def final_record(server: LiveServer, user: str, record_id: str) -> dict[str, Any]:
    """The record once its reply has ended: the SSE stream of a reply closes after its final event."""
    stream = await server.get(f"/ai/records/{record_id}/stream", user)
    assert stream.status_code == 200 and ("event: done" in stream.text or "event: error" in stream.text)
    return await record(server, user, record_id)


@pytest.mark.parametrize("phase", ["queued", "generating", "concluding"])
async def test_a_reply_ends_stored_whichever_phase_its_client_leaves_in(
    make_server: ServerFactory, fake_llm: FakeLLM, phase: str
) -> None:
    server = await make_server(
        ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_max_concurrency=1, ai_timeout_s=20
    )
    fake_llm.mode = "hang"  # one word, then nothing until released
    alice = uid()
    room = await server.room(alice, ai=True)
    if phase == "queued":  # another reply holds the only slot
        await server.send(alice, await server.room(alice, ai=True), "hold the slot")
        await fake_llm.wait_for_requests(1)
    async with server.ws(alice) as ws:  # the client watching the reply, which leaves
        record_id = (await server.send(alice, room, "then leave"))["ai_record_id"]
        if phase != "queued":
            await ws.recv_type("ai_reply_delta")
        if phase == "concluding":
            fake_llm.release.set()  # the rest arrives and the reply is stored while the socket drops
            ws.conn.transport.abort()
    fake_llm.release.set()
    rec = await final_record(server, alice, record_id)
    assert (rec["status"], rec["finish_reason"], rec["response_content"]) == (1, "stop", fake_llm.text())
    listing = (await server.get("/message/list", alice, params={"session_id": room})).json()
    assert listing["messages"][0]["msg_content"] == fake_llm.text()


@pytest.mark.parametrize(("mode", "code"), [("hang", "timeout"), ("cut", "provider_error")])
async def test_a_failing_model_ends_the_reply_of_a_client_that_left(
    make_server: ServerFactory, fake_llm: FakeLLM, mode: str, code: str
) -> None:
    server = await make_server(ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_timeout_s=1)
    fake_llm.mode = mode
    alice = uid()
    room = await server.room(alice, ai=True)
    async with server.ws(alice) as ws:
        record_id = (await server.send(alice, room, "and go"))["ai_record_id"]
        await ws.recv_type("ai_reply_start")
    rec = await final_record(server, alice, record_id)
    assert rec["status"] == 2 and rec["error_message"].startswith(f"{code}: ") and rec["response_content"]
