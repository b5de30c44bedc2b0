"""REST sessions and members."""

from __future__ import annotations

from tests.helpers import LiveServer, uid


async def test_create_session_with_members(server: LiveServer) -> None:
    alice, bob, room = uid(), uid(), uid("s")
    r = await server.post("/sessions", alice, {"session_id": room, "title": "Plans", "members": [bob, bob, alice]})
    assert r.status_code == 201
    body = r.json()
    assert (body["session_id"], body["title"], body["created_by"], body["role"]) == (room, "Plans", alice, "owner")
    assert (body["ai_enabled"], body["last_seq"], body["last_message"]) == (True, 0, None)
    bobs = (await server.get("/sessions", bob)).json()["sessions"]
    assert [(s["session_id"], s["role"]) for s in bobs] == [(room, "member")]
    assert (await server.send(bob, room, "hi"))["seq"] == 1


async def test_create_session_generates_an_id(server: LiveServer) -> None:
    r = await server.post("/sessions", uid(), {})
    assert r.status_code == 201 and 1 <= len(r.json()["session_id"]) <= 48


async def test_existing_session_id_is_409_for_anyone(server: LiveServer) -> None:
    alice, room = uid(), uid("s")
    assert (await server.post("/sessions", alice, {"session_id": room})).status_code == 201
    for user in (alice, uid()):
        r = await server.post("/sessions", user, {"session_id": room})
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


async def test_bad_session_bodies(server: LiveServer) -> None:
    alice = uid()
    for body in [
        {"session_id": "no spaces"},
        {"members": ["ok", "not ok"]},
        {"title": "x" * 201},
        {"ai_enabled": "sometimes"},
        {"members": "bob"},
    ]:
        r = await server.post("/sessions", alice, body)
        assert r.status_code == 422, body
    assert (await server.http.post("/sessions", content=b"{", headers={"Authorization": "Bearer x"})).status_code == 401
    assert (await server.post("/sessions", None, {})).status_code == 401


async def test_sessions_are_ordered_by_activity_with_last_message(server: LiveServer) -> None:
    alice = uid()
    a, b = await server.room(alice), await server.room(alice)
    await server.send(alice, a, "in a")
    await server.send(alice, b, "in b")
    await server.send(alice, a, "a again")
    sessions = (await server.get("/sessions", alice)).json()["sessions"]
    assert [s["session_id"] for s in sessions] == [a, b]
    assert sessions[0]["last_message"]["msg_content"] == "a again" and sessions[0]["last_seq"] == 2
    assert sessions[0]["updated_at"] >= sessions[1]["updated_at"]
    assert (await server.get("/sessions", uid())).json() == {"sessions": []}


async def test_any_member_may_add_members(server: LiveServer) -> None:
    owner, member, newcomer, room = uid(), uid(), uid(), uid("s")
    await server.post("/sessions", owner, {"session_id": room, "members": [member]})
    r = await server.post(f"/sessions/{room}/members", member, {"user_id": newcomer})
    assert r.status_code == 201
    body = r.json()
    assert (body["session_id"], body["user_id"], body["role"]) == (room, newcomer, "member") and body["joined_at"]
    again = await server.post(f"/sessions/{room}/members", owner, {"user_id": newcomer})
    assert again.status_code == 200 and again.json()["joined_at"] == body["joined_at"]
    owner_again = await server.post(f"/sessions/{room}/members", member, {"user_id": owner})
    assert owner_again.status_code == 200 and owner_again.json()["role"] == "owner"


async def test_non_member_cannot_add_whether_or_not_the_session_exists(server: LiveServer) -> None:
    owner, mallory, room = uid(), uid(), uid("s")
    await server.post("/sessions", owner, {"session_id": room})
    for target in (room, uid("nosuch")):
        r = await server.post(f"/sessions/{target}/members", mallory, {"user_id": mallory})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


async def test_bad_member_requests(server: LiveServer) -> None:
    owner, room = uid(), uid("s")
    await server.post("/sessions", owner, {"session_id": room})
    assert (await server.post(f"/sessions/{room}/members", owner, {"user_id": "bad id"})).status_code == 422
    assert (await server.post(f"/sessions/{room}/members", owner, {})).status_code == 422
    assert (await server.post(f"/sessions/{room}/members", None, {"user_id": "x"})).status_code == 401
    r = await server.http.post(f"/sessions/{room}/members", content=b"[", headers={"Authorization": "Bearer x"})
    assert r.status_code == 401
