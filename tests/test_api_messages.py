"""REST messages: send, idempotency, get, list (pages and keyset), and every error code in its precedence."""

from __future__ import annotations

import asyncio

from tests.helpers import LiveServer, auth, token, uid


async def test_send_creates_session_and_returns_flat_message(server: LiveServer) -> None:
    alice, room = uid(), uid("s")
    r = await server.post("/message/send", alice, {"session_id": room, "content": "hello"})
    assert r.status_code == 201
    body = r.json()
    assert body["seq"] == 1 and body["session_id"] == room and body["from_user_id"] == alice
    assert body["msg_type"] == "TEXT" and body["msg_content"] == "hello" and body["duplicate"] is False
    assert body["message_id"].startswith("msg_") and len(body["message_id"]) >= 4 + 20 + 16
    assert body["created_at"].endswith("+00:00")
    assert "ai_record_id" in body and body["client_msg_id"] is None
    sessions = (await server.get("/sessions", alice)).json()["sessions"]
    assert [(s["session_id"], s["role"], s["last_seq"]) for s in sessions] == [(room, "owner", 1)]


async def test_retried_send_with_client_msg_id_returns_the_original(server: LiveServer) -> None:
    alice, room = uid(), uid("s")
    body = {"session_id": room, "content": "once", "client_msg_id": "c-1"}
    first = await server.post("/message/send", alice, body)
    again = await server.post("/message/send", alice, body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["message_id"] == first.json()["message_id"] and again.json()["duplicate"] is True
    assert again.json()["ai_record_id"] == first.json()["ai_record_id"]
    listing = (await server.get("/message/list", alice, params={"session_id": room})).json()
    # the session was created with the assistant, whose echo reply may be stored by now
    assert [m["msg_content"] for m in listing["messages"] if m["from_user_id"] == alice] == ["once"]


async def test_concurrent_retries_store_one_message(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    await server.send(alice, room, "first")
    body = {"session_id": room, "content": "retried", "client_msg_id": "same"}
    answers = await asyncio.gather(*(server.post("/message/send", alice, body) for _ in range(8)))
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201]
    assert len({r.json()["message_id"] for r in answers}) == 1
    listing = (await server.get("/message/list", alice, params={"session_id": room})).json()
    assert [m["seq"] for m in listing["messages"]] == [2, 1]


async def test_same_client_msg_id_from_another_user_is_another_message(server: LiveServer) -> None:
    alice, bob, room = uid(), uid(), uid("s")
    await server.post("/sessions", alice, {"session_id": room, "members": [bob]})
    a = await server.send(alice, room, "a", client_msg_id="x")
    b = await server.send(bob, room, "b", client_msg_id="x")
    assert a["message_id"] != b["message_id"] and b["duplicate"] is False


async def test_get_one_message(server: LiveServer) -> None:
    alice, mallory, room = uid(), uid(), uid("s")
    sent = await server.send(alice, room, "hi")
    r = await server.get(f"/message/{sent['message_id']}", alice)
    assert r.status_code == 200 and r.json()["msg_content"] == "hi" and "duplicate" not in r.json()
    assert (await server.get(f"/message/{sent['message_id']}", mallory)).status_code == 404
    missing = await server.get("/message/msg_nope", alice)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_list_pages_newest_first(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    for i in range(1, 8):
        await server.send(alice, room, f"m{i}")
    r = await server.get("/message/list", alice, params={"session_id": room, "page": 2, "page_size": 3})
    body = r.json()
    assert [m["seq"] for m in body["messages"]] == [4, 3, 2]
    assert (body["total"], body["page"], body["page_size"], body["has_more"]) == (7, 2, 3, True)
    last = (await server.get("/message/list", alice, params={"session_id": room, "page": 3, "page_size": 3})).json()
    assert [m["seq"] for m in last["messages"]] == [1] and last["has_more"] is False
    default = (await server.get("/message/list", alice, params={"session_id": room})).json()
    assert (default["page"], default["page_size"], len(default["messages"])) == (1, 20, 7)


async def test_list_keyset_before_and_after(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    for i in range(1, 8):
        await server.send(alice, room, f"m{i}")
    before = (await server.get("/message/list", alice, params={"session_id": room, "before_seq": 6, "limit": 3})).json()
    assert [m["seq"] for m in before["messages"]] == [5, 4, 3]
    assert (before["page"], before["page_size"], before["has_more"], before["total"]) == (None, 3, True, 7)
    after = (await server.get("/message/list", alice, params={"session_id": room, "after_seq": 4})).json()
    assert [m["seq"] for m in after["messages"]] == [5, 6, 7]
    assert (after["page_size"], after["has_more"]) == (50, False)
    tail = (await server.get("/message/list", alice, params={"session_id": room, "after_seq": 2, "limit": 5})).json()
    assert [m["seq"] for m in tail["messages"]] == [3, 4, 5, 6, 7] and tail["has_more"] is False


async def test_bad_list_queries_are_422(server: LiveServer) -> None:
    alice, room = uid(), uid("s")
    await server.send(alice, room, "x")
    bad = [
        {"session_id": room, "page": 1, "before_seq": 3},
        {"session_id": room, "before_seq": 3, "after_seq": 1},
        {"session_id": room, "page_size": 101},
        {"session_id": room, "page_size": 0},
        {"session_id": room, "page": 0},
        {"session_id": room, "before_seq": 5, "limit": 201},
        {"session_id": room, "after_seq": -1},
        {"session_id": room, "page": "two"},
        {"session_id": "bad id!"},
        {},
    ]
    for params in bad:
        r = await server.get("/message/list", alice, params=params)
        assert r.status_code == 422, params
        assert r.json()["error"]["code"] == "validation_error"


async def test_send_validation_errors_are_422(server: LiveServer) -> None:
    alice, room = uid(), uid("s")
    for body in [
        {"session_id": room, "content": ""},
        {"session_id": room, "content": "  \n\t "},
        {"session_id": room, "content": "x" * 5001},
        {"session_id": room},
        {"content": "no session"},
        {"session_id": "spaces are bad", "content": "x"},
        {"session_id": "x" * 49, "content": "x"},
        {"session_id": room, "content": 5},
        {"session_id": room, "content": "x", "client_msg_id": ""},
        [1, 2],
    ]:
        r = await server.post("/message/send", alice, body)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "validation_error"
    ok = await server.post("/message/send", alice, {"session_id": room, "content": "é" * 5000})
    assert ok.status_code == 201  # 5000 code points, 10000 bytes


async def test_malformed_json_is_400(server: LiveServer) -> None:
    r = await server.http.post("/message/send", content=b"{not json", headers=auth(uid()))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


async def test_body_limit_is_64_kib(server: LiveServer) -> None:
    alice = uid()
    padding = " " * (65536 - len('{"session_id": "s1", "content": "x"}'))
    exact = ('{"session_id": "s1", "content": "x"}' + padding).encode()
    assert len(exact) == 65536
    assert (await server.http.post("/message/send", content=exact, headers=auth(alice))).status_code == 201
    over = await server.http.post("/message/send", content=exact + b" ", headers=auth(alice))
    assert over.status_code == 413 and over.json()["error"]["code"] == "payload_too_large"


async def test_body_limit_without_content_length(server: LiveServer) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"session_id": "s1", "content": "'
        yield b"x" * 70000
        yield b'"}'

    r = await server.http.post("/message/send", content=chunks(), headers=auth(uid()))
    assert r.status_code == 413


async def test_tokens_are_required_and_checked(server: LiveServer) -> None:
    body = {"session_id": "s1", "content": "x"}
    cases = [
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer {token('alice', secret='another-secret-another-secret-xx')}"},
        {"Authorization": f"Bearer {token('alice', ttl=-10)}"},
        {"Authorization": f"Basic {token('alice')}"},
    ]
    for headers in cases:
        r = await server.http.post("/message/send", json=body, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized"
    for path in ["/message/list?session_id=s1", "/message/msg_x", "/sessions"]:
        assert (await server.http.get(path)).status_code == 401


async def test_invalid_subject_is_401(server: LiveServer) -> None:
    import jwt

    for sub in ["has space", "x" * 49, "", "ai_bot"]:
        bad = jwt.encode({"sub": sub}, server.settings.secret, algorithm="HS256")
        r = await server.http.get("/sessions", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, sub
    no_sub = jwt.encode({"user": "alice"}, server.settings.secret, algorithm="HS256")
    assert (await server.http.get("/sessions", headers={"Authorization": f"Bearer {no_sub}"})).status_code == 401


async def test_precedence_of_errors(server: LiveServer) -> None:
    # unknown route: 404 without a token
    assert (await server.http.get("/nowhere")).status_code == 404
    # 401 before 413 and 400
    assert (await server.http.post("/message/send", content=b"x" * 70000)).status_code == 401
    assert (await server.http.post("/message/send", content=b"{bad")).status_code == 401
    # 413 before 400
    alice = uid()
    r = await server.http.post("/message/send", content=b"{" * 70000, headers=auth(alice))
    assert r.status_code == 413
    # 422 before 403: a session one may not use, with bad content
    owner, room = uid(), uid("s")
    await server.send(owner, room, "mine")
    r = await server.post("/message/send", alice, {"session_id": room, "content": ""})
    assert r.status_code == 422


async def test_non_members_are_refused(server: LiveServer) -> None:
    owner, mallory = uid(), uid()
    room = await server.room(owner)
    await server.send(owner, room, "private")
    r = await server.post("/message/send", mallory, {"session_id": room, "content": "let me in"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for params in [{"session_id": room}, {"session_id": room, "after_seq": 0}, {"session_id": uid("nosuch")}]:
        r = await server.get("/message/list", mallory, params=params)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    listing = (await server.get("/message/list", owner, params={"session_id": room})).json()
    assert listing["total"] == 1


async def test_seq_is_gap_free_under_concurrent_senders(server: LiveServer) -> None:
    users = [uid() for _ in range(5)]
    room = await server.room(users[0], *users[1:])

    async def burst(user: str) -> list[int]:
        return [(await server.send(user, room, f"{user}-{i}"))["seq"] for i in range(10)]

    results = await asyncio.gather(*(burst(u) for u in users))
    seqs = sorted(s for r in results for s in r)
    assert seqs == list(range(1, 51))
    for r in results:
        assert r == sorted(r)  # each sender's own messages are ordered
    listing = await server.get("/message/list", users[0], params={"session_id": room, "after_seq": 0, "limit": 200})
    assert [m["seq"] for m in listing.json()["messages"]] == list(range(1, 51))
