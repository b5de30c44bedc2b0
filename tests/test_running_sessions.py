"""Running a session (SPEC §11): members, leaving and removal, settings, the assistant answering when mentioned."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from imsvc.mention import mention_pattern, mentions
from imsvc.settings import load_settings
from tests import fakellm
from tests.conftest import ServerFactory
from tests.fakellm import FakeLLM
from tests.helpers import LiveServer, auth, uid

fake_llm = fakellm.fake_llm


def body(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    found: dict[str, Any] = r.json()
    return found


def code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


async def remove(server: LiveServer, actor: str, room: str, user: str) -> httpx.Response:
    return await server.http.delete(f"/sessions/{room}/members/{user}", headers=auth(actor))


async def patch(server: LiveServer, actor: str, room: str, **changes: Any) -> httpx.Response:
    return await server.http.patch(f"/sessions/{room}", json=changes, headers=auth(actor))


async def test_a_session_lists_its_members_in_join_order(server: LiveServer) -> None:
    alice, bob, carol, dave, mallory = uid(), uid(), uid(), uid(), uid()
    room = await server.room(alice, carol, bob)
    body(await server.post(f"/sessions/{room}/members", bob, {"user_id": dave}), 201)
    async with server.ws(carol):
        found = body(await server.get(f"/sessions/{room}", alice))
    assert [(m["user_id"], m["role"]) for m in found["members"]] == [
        (alice, "owner"),
        (carol, "member"),
        (bob, "member"),
        (dave, "member"),
    ]
    assert [m["online"] for m in found["members"]] == [False, True, False, False]
    assert found["members"][3]["last_read_seq"] == 1  # dave joined at the seq of his MEMBER event
    assert (found["role"], found["ai_trigger"], found["ai_model"], found["unread"]) == ("owner", "always", None, 0)
    assert code(await server.get(f"/sessions/{room}", mallory)) == (403, "forbidden")
    assert code(await server.get("/sessions/nope", mallory)) == (403, "forbidden")
    assert code(await server.get("/sessions/bad%20id", alice)) == (422, "validation_error")


async def test_leaving_removing_and_the_owners_hand_over(server: LiveServer) -> None:
    alice, bob, carol, dave, mallory = uid(), uid(), uid(), uid(), uid()
    room = await server.room(alice, bob, carol, dave)
    assert code(await remove(server, bob, room, carol)) == (403, "forbidden")  # only the owner removes others
    assert code(await remove(server, mallory, room, carol)) == (403, "forbidden")  # not a member
    assert code(await remove(server, alice, room, mallory)) == (404, "not_found")  # not a member either
    assert body(await remove(server, alice, room, dave)) == {"session_id": room, "user_id": dave, "action": "removed"}
    assert body(await remove(server, carol, room, carol))["action"] == "left"
    assert body(await remove(server, alice, room, alice))["action"] == "left"  # the owner leaves
    events = body(await server.get("/message/list", bob, params={"session_id": room, "types": "all"}))["messages"]
    assert [m["data"] for m in reversed(events)] == [
        {"user_id": dave, "action": "removed", "role": "member"},
        {"user_id": carol, "action": "left", "role": "member"},
        {"user_id": alice, "action": "left", "role": "owner", "new_owner": bob},
    ]
    assert [m["from_user_id"] for m in reversed(events)] == [alice, carol, alice]
    found = body(await server.get(f"/sessions/{room}", bob))
    assert [(m["user_id"], m["role"]) for m in found["members"]] == [(bob, "owner")]
    last = body(await remove(server, bob, room, bob))
    assert last["action"] == "left"
    assert code(await server.get(f"/sessions/{room}", bob)) == (403, "forbidden")


async def test_the_last_owner_leaving_names_no_new_owner(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    async with server.ws(alice) as ws:
        body(await remove(server, alice, room, alice))
        frame = await ws.recv()
    assert frame["message"]["data"] == {"user_id": alice, "action": "left", "role": "owner", "new_owner": None}


async def test_a_removed_member_gets_their_removal_and_nothing_more(server: LiveServer) -> None:
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    async with server.ws(bob) as ws:
        body(await remove(server, alice, room, bob))
        removal = await ws.recv()
        assert removal["type"] == "new_message" and removal["message"]["data"]["action"] == "removed"
        await server.send(alice, room, "after bob left")
        await ws.nothing_more()
        refused = await ws.request({"type": "send_message", "session_id": room, "content": "let me back"})
        assert refused["code"] == "forbidden"
        synced = await ws.request({"type": "sync", "session_id": room, "after_seq": 0})
        assert synced["code"] == "forbidden"
    listing = await server.get("/message/list", bob, params={"session_id": room})
    assert code(listing) == (403, "forbidden")


async def test_a_member_removed_while_a_reply_streams_gets_none_of_the_rest(
    make_server: ServerFactory, fake_llm: FakeLLM
) -> None:
    ai = await make_server(ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_timeout_s=20)
    fake_llm.mode = "hang"
    alice, bob = uid(), uid()
    room = await ai.room(alice, bob, ai=True)
    async with ai.ws(alice) as a, ai.ws(bob) as b:
        sent = await ai.send(alice, room, "go")
        await b.recv_type("ai_reply_delta")
        body(await remove(ai, alice, room, bob))
        assert (await b.recv_type("new_message"))["message"]["msg_type"] == "MEMBER"
        fake_llm.release.set()
        final = await a.recv_type("ai_reply")
        assert final["record_id"] == sent["ai_record_id"]
        await b.nothing_more()  # no delta, no final frame after his removal


async def test_settings_are_the_owners_and_each_change_is_one_event(make_server: ServerFactory) -> None:
    server = await make_server(ai_models="m-small,m-large")
    alice, bob = uid(), uid()
    room = await server.room(alice, bob)
    assert code(await patch(server, bob, room, title="mine now")) == (403, "forbidden")
    async with server.ws(bob) as ws:
        changed = body(await patch(server, alice, room, title="Plans", ai_trigger="mention", ai_model="m-large"))
        assert (changed["title"], changed["ai_trigger"], changed["ai_model"]) == ("Plans", "mention", "m-large")
        event = (await ws.recv())["message"]
        assert event["msg_type"] == "SETTINGS" and event["msg_content"] == ""
        assert event["data"] == {"title": "Plans", "ai_trigger": "mention", "ai_model": "m-large"}
        same = body(await patch(server, alice, room, title="Plans", ai_trigger="mention"))  # nothing changes
        assert same["last_seq"] == changed["last_seq"]
        reset = body(await patch(server, alice, room, ai_model=None, ai_system_prompt="Be brief."))
        assert (reset["ai_model"], reset["ai_system_prompt"]) == (None, "Be brief.")
        assert (await ws.recv())["message"]["data"] == {"ai_model": None, "ai_system_prompt": "Be brief."}
        await ws.nothing_more()
    for bad in (
        {"ai_model": "m-huge"},
        {"title": "x" * 201},
        {"ai_system_prompt": "x" * 4001},
        {"ai_trigger": "sometimes"},
        {"ai_enabled": None},
    ):
        assert code(await patch(server, alice, room, **bad)) == (422, "validation_error"), bad


@pytest.mark.parametrize(
    ("text", "mentioned"),
    [
        ("@ai_bot what now?", True),
        ("what now, @AI_BOT", True),
        ("(@ai_bot)", True),
        ("hey @ai_bot!", True),
        ("@assistant help", True),
        ("@Assistant, help", True),
        ("@ai_bot2 is someone else", False),
        ("mail me@ai_bot please", False),
        ("@ai_bot.v2", False),
        ("@assistants", False),
        ("no mention here", False),
        ("@@ai_bot", False),
    ],
)
def test_the_mention_rule(text: str, mentioned: bool) -> None:
    assert mentions(mention_pattern("ai_bot", "@assistant"), text) is mentioned


async def test_in_mention_mode_the_assistant_answers_when_asked_with_the_sessions_persona(
    make_server: ServerFactory, fake_llm: FakeLLM
) -> None:
    ai = await make_server(ai_provider="openai", ai_api_key="k", ai_base_url=fake_llm.url, ai_model="default-m")
    alice, bob = uid(), uid()
    room = await ai.room(alice, bob, ai=True)
    body(await patch(ai, alice, room, ai_trigger="mention", ai_system_prompt="You are a pirate.", ai_model="m-2"))
    async with ai.ws(alice) as ws:
        quiet = await ai.send(alice, room, "lunch at noon?")
        assert quiet["ai_record_id"] is None
        await ai.send(bob, room, "sure")
        asked = await ai.send(bob, room, "@ai_bot where should we eat?")
        assert asked["ai_record_id"] is not None
        await ws.recv_type("ai_reply")
    (request,) = fake_llm.requests
    assert request["model"] == "m-2"
    assert request["messages"] == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": f"{alice}: lunch at noon?"},
        {"role": "user", "content": f"{bob}: sure"},
        {"role": "user", "content": f"{bob}: @ai_bot where should we eat?"},
    ]
    record = body(await ai.get(f"/ai/records/{asked['ai_record_id']}", alice))
    assert record["model"] == "m-2" and json.loads(record["request_content"])["model"] == "m-2"


def test_dev_mode_keeps_its_secret_across_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = load_settings(_env_file=None, dev_mode=True)
    again = load_settings(_env_file=None, dev_mode=True)
    assert first.secret == again.secret and len(first.secret) >= 32
    path = tmp_path / "data" / "dev-jwt-secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.unlink()
    assert load_settings(_env_file=None, dev_mode=True, jwt_secret="given").secret == "given"
    assert not path.exists()  # a configured secret is never replaced, nor a file written
