"""One sliding-window budget per user across REST sends, WebSocket sends and regenerates."""

from __future__ import annotations

from imsvc.ratelimit import RateLimiter
from tests.conftest import ServerFactory
from tests.helpers import uid


async def test_rest_and_websocket_share_the_budget(make_server: ServerFactory) -> None:
    server = await make_server(rate_limit_messages=3, rate_limit_window_s=60)
    alice = uid()
    room = await server.room(alice)
    await server.send(alice, room, "1")
    await server.send(alice, room, "2", client_msg_id="two")
    async with server.ws(alice) as ws:
        assert (await ws.request({"type": "send_message", "session_id": room, "content": "3"}))[
            "type"
        ] == "message_sent"
        refused = await ws.request({"type": "send_message", "session_id": room, "content": "4", "id": "r4"})
        assert refused == {"type": "error", "code": "rate_limited", "message": refused["message"], "ref": "r4"}
    r = await server.post("/message/send", alice, {"session_id": room, "content": "5"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # an idempotent repeat is answered, and does not count
    again = await server.post("/message/send", alice, {"session_id": room, "content": "2", "client_msg_id": "two"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    # another user has a budget of their own
    bob = uid()
    assert (await server.post("/message/send", bob, {"session_id": uid("s"), "content": "hi"})).status_code == 201
    listing = (await server.get("/message/list", alice, params={"session_id": room})).json()
    assert listing["total"] == 3


async def test_zero_turns_the_limit_off(make_server: ServerFactory) -> None:
    server = await make_server(rate_limit_messages=0)
    alice = uid()
    room = await server.room(alice)
    for i in range(30):
        await server.send(alice, room, str(i))


def test_window_slides() -> None:
    now = [1000.0]
    limiter = RateLimiter(2, 10, clock=lambda: now[0])
    assert limiter.take("u") is None and limiter.take("u") is None
    assert limiter.take("u") == 10
    now[0] += 4
    assert limiter.take("u") == 6
    now[0] += 6
    assert limiter.take("u") is None
    limiter.give_back("u")
    assert limiter.take("u") is None
