"""Edits, deletes and reactions (SPEC §10): routes, frames, rules, the event log replayed, the model's context."""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests import fakellm
from tests.conftest import ServerFactory
from tests.fakellm import FakeLLM
from tests.helpers import LiveServer, auth, uid

fake_llm = fakellm.fake_llm


async def edit(server: LiveServer, user: str, message_id: str, content: str, **extra: Any) -> httpx.Response:
    return await server.http.patch(f"/message/{message_id}", json={"content": content, **extra}, headers=auth(user))


async def delete(server: LiveServer, user: str, message_id: str, **params: str) -> httpx.Response:
    return await server.http.delete(f"/message/{message_id}", params=params, headers=auth(user))


async def react(server: LiveServer, user: str, message_id: str, emoji: str, **params: str) -> httpx.Response:
    path = f"/message/{message_id}/reactions/{quote(emoji, safe='')}"
    return await server.http.put(path, params=params, headers=auth(user))


async def unreact(server: LiveServer, user: str, message_id: str, emoji: str, **params: str) -> httpx.Response:
    path = f"/message/{message_id}/reactions/{quote(emoji, safe='')}"
    return await server.http.delete(path, params=params, headers=auth(user))


def body(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    found: dict[str, Any] = r.json()
    return found


def code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


async def history(server: LiveServer, user: str, room: str, **params: Any) -> dict[str, Any]:
    return body(await server.get("/message/list", user, params={"session_id": room, "page_size": 100, **params}))


async def test_an_edit_is_an_event_and_folds_its_target(server: LiveServer) -> None:
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    sent = await server.send(alice, room, "helo")
    async with server.ws(bob) as ws:
        answer = body(await edit(server, alice, sent["message_id"], "hello"))
        event = answer["event"]
        assert (answer["msg_content"], answer["seq"], answer["edited_at"]) == ("hello", 1, event["created_at"])
        assert (event["msg_type"], event["msg_content"], event["target_message_id"], event["seq"]) == (
            "EDIT",
            "hello",
            sent["message_id"],
            2,
        )
        assert event["reactions"] == {} and event["deleted"] is False and event["from_user_id"] == alice
        frame = await ws.recv()
        assert frame == {"type": "new_message", "message": event}
    same = body(await edit(server, alice, sent["message_id"], "hello"))  # the same text changes nothing
    assert same["event"] is None and same["msg_content"] == "hello"
    fetched = body(await server.get(f"/message/{sent['message_id']}", alice))
    assert fetched["msg_content"] == "hello" and fetched["edited_at"] == event["created_at"]


async def test_who_may_edit_and_in_which_order_the_checks_run(server: LiveServer) -> None:
    alice, bob, mallory = uid(), uid(), uid()
    room = await server.room(alice, bob)
    sent = await server.send(alice, room, "mine")
    assert code(await edit(server, mallory, sent["message_id"], "x")) == (404, "not_found")  # not a member
    assert code(await edit(server, alice, "msg_nothing", "x")) == (404, "not_found")
    assert code(await edit(server, bob, sent["message_id"], "x")) == (403, "forbidden")  # not the author
    added = body(await server.post(f"/sessions/{room}/members", alice, {"user_id": uid()}), 201)
    member_row = (await history(server, alice, room, types="all"))["messages"][0]
    assert member_row["msg_type"] == "MEMBER" and added["user_id"] == member_row["data"]["user_id"]
    assert code(await edit(server, alice, member_row["message_id"], "x")) == (422, "validation_error")
    for bad in ("", "   ", "x" * 5001):
        assert code(await edit(server, alice, sent["message_id"], bad)) == (422, "validation_error")
    body(await delete(server, alice, sent["message_id"]))
    assert code(await edit(server, alice, sent["message_id"], "again")) == (409, "conflict")


async def test_delete_leaves_a_tombstone_and_only_author_or_owner_may(server: LiveServer) -> None:
    alice, bob, carol = uid(), uid(), uid()
    room = await server.room(alice, bob, carol)
    from_bob = await server.send(bob, room, "bob's")
    from_carol = await server.send(carol, room, "carol's")
    body(await react(server, alice, from_bob["message_id"], "👍"))
    assert code(await delete(server, carol, from_bob["message_id"])) == (403, "forbidden")
    gone = body(await delete(server, alice, from_bob["message_id"]))  # the owner deletes anyone's
    assert (gone["msg_content"], gone["deleted"], gone["reactions"]) == ("", True, {})
    assert gone["event"]["msg_type"] == "DELETE" and gone["event"]["msg_content"] == ""
    again = body(await delete(server, bob, from_bob["message_id"]))  # already deleted: nothing changes
    assert again["event"] is None and again["deleted"] is True
    own = body(await delete(server, carol, from_carol["message_id"]))
    assert own["deleted"] is True
    assert code(await react(server, alice, from_bob["message_id"], "🎉")) == (409, "conflict")
    listing = await history(server, alice, room)
    assert [m["deleted"] for m in listing["messages"]] == [True, True]  # tombstones stay in history


async def test_reactions_keep_their_order_and_their_limits(server: LiveServer) -> None:
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    sent = await server.send(alice, room, "react to me")
    mid = sent["message_id"]
    first = body(await react(server, bob, mid, "👍"))
    assert first["reactions"] == {"👍": [bob]} and first["event"]["msg_type"] == "REACT"
    assert first["event"]["msg_content"] == "👍" and first["event"]["reactions"] == {}
    assert body(await react(server, alice, mid, "👍"))["reactions"] == {"👍": [bob, alice]}
    assert body(await react(server, alice, mid, "👍"))["event"] is None  # already there
    assert body(await unreact(server, bob, mid, "🎉"))["event"] is None  # never there
    left = body(await unreact(server, bob, mid, "👍"))
    assert left["reactions"] == {"👍": [alice]} and left["event"]["msg_type"] == "UNREACT"
    assert body(await unreact(server, alice, mid, "👍"))["reactions"] == {}
    family = "👨‍👩‍👧‍👦"  # one emoji, seven code points, percent-encoded in the path
    assert body(await react(server, bob, mid, family))["reactions"] == {family: [bob]}
    for bad in ("a b", "x" * 33, "\t"):
        assert code(await react(server, bob, mid, bad)) == (422, "validation_error")
    for n in range(19):
        body(await react(server, bob, mid, f"e{n}"))
    assert code(await react(server, bob, mid, "one-too-many")) == (422, "validation_error")
    assert body(await react(server, alice, mid, family))["reactions"][family] == [bob, alice]  # not a new one


async def test_a_repeated_client_msg_id_answers_the_first_change(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    sent = await server.send(alice, room, "one")
    first = body(await edit(server, alice, sent["message_id"], "two", client_msg_id="e-1"))
    body(await edit(server, alice, sent["message_id"], "three"))
    repeat = body(await edit(server, alice, sent["message_id"], "two", client_msg_id="e-1"))
    assert repeat["event"] == first["event"] and repeat["msg_content"] == "three"  # the target as it is now
    liked = body(await react(server, alice, sent["message_id"], "👍", client_msg_id="r-1"))
    body(await unreact(server, alice, sent["message_id"], "👍"))
    again = body(await react(server, alice, sent["message_id"], "👍", client_msg_id="r-1"))
    assert again["event"] == liked["event"] and again["reactions"] == {}  # not applied again
    assert (await history(server, alice, room, types="all"))["total"] == 5


async def test_change_frames_answer_the_actor_and_reach_everyone_else(server: LiveServer) -> None:
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    sent = await server.send(alice, room, "hi")
    mid = sent["message_id"]
    async with server.ws(alice) as a, server.ws(alice) as a2, server.ws(bob) as b:
        frames = [
            {"type": "edit_message", "message_id": mid, "content": "hi!"},
            {"type": "react", "message_id": mid, "emoji": "👋"},
            {"type": "unreact", "message_id": mid, "emoji": "👋"},
            {"type": "delete_message", "message_id": mid},
        ]
        for n, (frame, kind) in enumerate(zip(frames, ["EDIT", "REACT", "UNREACT", "DELETE"], strict=True)):
            answer = await a.request(frame)
            assert answer["type"] == "message_sent" and answer["duplicate"] is False
            assert answer["message"]["msg_type"] == kind and answer["message"]["seq"] == n + 2
            for other in (a2, b):
                assert await other.recv() == {"type": "new_message", "message": answer["message"]}
        unchanged = await a.request({"type": "delete_message", "message_id": mid})
        assert unchanged["type"] == "message_sent" and unchanged["duplicate"] is True
        assert unchanged["message"]["message_id"] == mid and unchanged["message"]["deleted"] is True
        refused = [
            ({"type": "edit_message", "message_id": mid, "content": "x"}, "conflict"),
            ({"type": "react", "message_id": mid, "emoji": "a b"}, "validation_error"),
            ({"type": "edit_message", "message_id": "msg_none", "content": "x"}, "not_found"),
        ]
        for frame, expected in refused:
            error = await a.request(frame)
            assert error["type"] == "error" and error["code"] == expected
        forbidden = await b.request({"type": "react", "message_id": mid, "emoji": "x"})
        assert forbidden["code"] == "conflict"  # deleted: a member may react, but not to a tombstone
        await b.nothing_more()
        await a2.nothing_more()


async def test_history_lists_text_by_default_and_every_event_on_request(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    ids = [(await server.send(alice, room, f"m{n}"))["message_id"] for n in range(3)]
    body(await edit(server, alice, ids[0], "m0 edited"))
    body(await react(server, alice, ids[1], "👍"))
    body(await delete(server, alice, ids[2]))
    text = await history(server, alice, room)
    assert [m["seq"] for m in text["messages"]] == [3, 2, 1] and text["total"] == 6
    assert [m["msg_content"] for m in text["messages"]] == ["", "m1", "m0 edited"]
    every = await history(server, alice, room, types="all")
    assert [m["msg_type"] for m in every["messages"]] == ["DELETE", "REACT", "EDIT", "TEXT", "TEXT", "TEXT"]
    keyset = body(await server.get("/message/list", alice, params={"session_id": room, "before_seq": 7, "limit": 2}))
    assert [m["seq"] for m in keyset["messages"]] == [3, 2] and keyset["has_more"] is True
    rest = body(await server.get("/message/list", alice, params={"session_id": room, "before_seq": 2, "limit": 2}))
    assert [m["seq"] for m in rest["messages"]] == [1] and rest["has_more"] is False
    newer = body(await server.get("/message/list", alice, params={"session_id": room, "after_seq": 2, "limit": 1}))
    assert [m["seq"] for m in newer["messages"]] == [3] and newer["has_more"] is False  # no newer TEXT rows
    paged = body(await server.get("/message/list", alice, params={"session_id": room, "page": 2, "page_size": 2}))
    assert [m["seq"] for m in paged["messages"]] == [1] and paged["has_more"] is False
    assert (await server.get("/message/list", alice, params={"session_id": room, "types": "x"})).status_code == 422
    sessions = body(await server.get("/sessions", alice))["sessions"]
    assert sessions[0]["last_message"]["seq"] == 3 and sessions[0]["last_message"]["deleted"] is True


def fold(held: dict[str, dict[str, Any]], row: dict[str, Any]) -> None:
    """What a client does with a change event: apply it to the target it holds."""
    target = held.get(row["target_message_id"] or "")
    if target is None:
        return
    kind, actor, value = row["msg_type"], row["from_user_id"], row["msg_content"]
    if kind == "EDIT":
        target["msg_content"], target["edited_at"] = value, row["created_at"]
    elif kind == "DELETE":
        target["msg_content"], target["deleted"], target["reactions"] = "", True, {}
    elif kind == "REACT":
        target["reactions"].setdefault(value, []).append(actor)
    elif kind == "UNREACT":
        target["reactions"][value].remove(actor)
        if not target["reactions"][value]:
            del target["reactions"][value]


async def random_changes(server: LiveServer, rng: random.Random, users: list[str], room: str, count: int) -> None:
    for _ in range(count):
        user = rng.choice(users)
        texts = [m for m in (await history(server, user, room))["messages"]]
        action = rng.choice(["send", "send", "edit", "delete", "react", "react", "unreact"])
        if action == "send" or not texts:
            await server.send(user, room, f"{user} {rng.random():.3f}")
            continue
        target = rng.choice(texts)
        emoji = rng.choice(["👍", "🎉", "❤️"])
        match action:
            case "edit":
                r = await edit(server, user, target["message_id"], f"edit {rng.random():.3f}")
            case "delete":
                r = await delete(server, user, target["message_id"])
            case "react":
                r = await react(server, user, target["message_id"], emoji)
            case _:
                r = await unreact(server, user, target["message_id"], emoji)
        assert r.status_code in (200, 403, 409), r.text  # others' edits and deletes, tombstones: refused


@pytest.mark.parametrize("seed", [7, 2026])
async def test_a_client_that_syncs_from_the_middle_ends_with_what_history_shows(server: LiveServer, seed: int) -> None:
    rng = random.Random(seed)
    users = [uid(), uid(), uid()]
    room = await server.room(users[0], *users[1:])
    await random_changes(server, rng, users, room, 40)
    middle = await history(server, users[1], room, types="all")
    held = {m["message_id"]: m for m in middle["messages"]}
    await random_changes(server, rng, users, room, 40)
    async with server.ws(users[1]) as ws:
        result = await ws.request({"type": "sync", "session_id": room, "after_seq": middle["total"]})
    assert not result["has_more"]
    known = set(held)
    for row in result["messages"]:
        if row["target_message_id"] in known:  # a target first received in this result is current already
            fold(held, row)
        held[row["message_id"]] = row
    final = await history(server, users[1], room, types="all")
    assert final["total"] == len(held)
    assert sorted(held.values(), key=lambda m: -m["seq"]) == final["messages"]


async def test_concurrent_changes_to_one_message_end_the_same_on_every_socket(server: LiveServer) -> None:
    alice, bob, carol = uid(), uid(), uid()
    room = await server.room(alice, bob, carol)
    sent = await server.send(alice, room, "everyone react")
    mid = sent["message_id"]
    start = body(await server.get(f"/message/{mid}", alice))
    async with server.ws(alice) as a1, server.ws(alice) as a2, server.ws(bob) as b, server.ws(carol) as c:
        sockets = [a1, a2, b, c]
        mine: dict[int, set[str]] = {i: set() for i in range(len(sockets))}
        sends = []
        for n in range(6):
            for i, ws in enumerate(sockets):
                kind, emoji = ("react" if n < 4 else "unreact"), ["👍", "🎉"][n % 2]
                mine[i].add(ref := f"{i}-{n}")
                sends.append(ws.send({"type": kind, "id": ref, "message_id": mid, "emoji": emoji}))
            mine[0].add(ref := f"edit-{n}")
            sends.append(a1.send({"type": "edit_message", "id": ref, "message_id": mid, "content": f"v{n}"}))
        await asyncio.gather(*sends)
        rows: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(sockets))}

        async def read(i: int, until: Any) -> None:
            while not until():
                frame = await sockets[i].recv()
                mine[i].discard(str(frame.get("ref")))
                stored_change = frame["type"] in ("new_message", "message_sent") and not frame.get("duplicate")
                if stored_change and frame["message"]["target_message_id"] == mid:
                    rows[i].append(frame["message"])

        await asyncio.gather(*(read(i, lambda i=i: not mine[i]) for i in range(len(sockets))))  # all answered
        final = body(await server.get(f"/message/{mid}", alice))
        total = (await history(server, alice, room, types="all"))["total"]
        await asyncio.gather(*(read(i, lambda i=i: rows[i] and rows[i][-1]["seq"] == total) for i in rows))
    for i in rows:
        assert [r["seq"] for r in rows[i]] == list(range(2, total + 1))  # every change, in order, once
        held = {mid: {**start, "reactions": {}}}
        for row in rows[i]:
            fold(held, row)
        assert held[mid] == final


async def test_changes_count_against_the_rate_limit_and_start_no_reply(make_server: ServerFactory) -> None:
    server = await make_server(rate_limit_messages=3, rate_limit_window_s=60)
    alice = uid()
    room = await server.room(alice, ai=True)
    sent = await server.send(alice, room, "hello")  # 1 (its reply is the assistant's, not alice's)
    body(await edit(server, alice, sent["message_id"], "hello again"))  # 2
    body(await react(server, alice, sent["message_id"], "👍"))  # 3
    limited = await react(server, alice, sent["message_id"], "🎉")
    assert code(limited) == (429, "rate_limited") and limited.headers["Retry-After"]
    records = body(await server.get("/ai/records", alice, params={"session_id": room}))["records"]
    assert [r["user_message_id"] for r in records] == [sent["message_id"]]  # the edit started none


async def test_the_model_sees_edited_text_and_not_deleted_messages(
    make_server: ServerFactory, fake_llm: FakeLLM
) -> None:
    ai = await make_server(ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_model="fake-model")
    alice = uid()
    room = await ai.room(alice, ai=True)
    async with ai.ws(alice) as ws:
        first = await ai.send(alice, room, "my name is Bob")
        await ws.recv_type("ai_reply")
        body(await edit(ai, alice, first["message_id"], "my name is Alice"))
        await ai.send(alice, room, "what is my name?")
        await ws.recv_type("ai_reply")
        after_edit = fake_llm.requests[-1]["messages"]
        body(await delete(ai, alice, first["message_id"]))
        await ai.send(alice, room, "and now?")
        await ws.recv_type("ai_reply")
        after_delete = fake_llm.requests[-1]["messages"]
    contents = [m["content"] for m in after_edit if m["role"] == "user"]
    assert contents == ["my name is Alice", "what is my name?"]
    assert [m["content"] for m in after_delete if m["role"] == "user"] == ["what is my name?", "and now?"]
    assert len(fake_llm.requests) == 3  # neither the edit nor the delete started a reply


async def test_a_client_msg_id_reused_for_another_kind_of_request_is_a_conflict(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    sent = await server.send(alice, room, "hello", client_msg_id="same")
    assert code(await react(server, alice, sent["message_id"], "👍", client_msg_id="same")) == (409, "conflict")
    body(await react(server, alice, sent["message_id"], "👍", client_msg_id="r"))
    assert code(await edit(server, alice, sent["message_id"], "x", client_msg_id="r")) == (409, "conflict")
    r = await server.post("/message/send", alice, {"session_id": room, "content": "again", "client_msg_id": "r"})
    assert code(r) == (409, "conflict")
