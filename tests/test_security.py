"""Security: forged and bad tokens, non-members on every route and frame, CORS, secrets kept out of logs."""

from __future__ import annotations

import base64
import json
import time
import types
import typing
import warnings
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from imsvc import auth
from imsvc.errors import Unauthorized
from imsvc.schemas import Inbound
from tests import fakellm
from tests.conftest import ServerFactory
from tests.fakellm import FakeLLM
from tests.helpers import SECRET, LiveServer, WsClient, token, uid

fake_llm = fakellm.fake_llm


def forged(claims: dict[str, Any], key: str | None = SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # HS512 wants a longer key: beside the point
        return jwt.encode({"exp": int(time.time()) + 600, **claims}, key, algorithm=algorithm)


def unsigned(alg: str, claims: dict[str, Any]) -> str:
    """A token with no signature, its header naming `alg`."""
    parts = [{"alg": alg, "typ": "JWT"}, {"exp": int(time.time()) + 600, **claims}]
    encoded = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=").decode() for p in parts]
    return ".".join([*encoded, ""])


BAD_TOKENS = {
    "alg none": forged({"sub": "alice"}, None, "none"),
    "alg NONE": unsigned("NONE", {"sub": "alice"}),
    "alg HS256 without a signature": unsigned("HS256", {"sub": "alice"}),
    "wrong secret": forged({"sub": "alice"}, "not-the-secret-0123456789abcdef0123"),
    "HS512 with the right secret": forged({"sub": "alice"}, SECRET, "HS512"),
    "expired": forged({"sub": "alice", "exp": int(time.time()) - 5}),
    "no sub": forged({"user": "alice"}),
    "sub not a string": forged({"sub": 12345}),
    "empty sub": forged({"sub": ""}),
    "sub of 49 characters": forged({"sub": "a" * 49}),
    "sub with a space": forged({"sub": "alice bob"}),
    "sub with a slash": forged({"sub": "alice/../bob"}),
    "sub with a trailing newline": forged({"sub": "alice\n"}),
    "sub with NUL": forged({"sub": "alice\x00"}),
    "sub not ASCII": forged({"sub": "älice"}),
    "the assistant": forged({"sub": "ai_bot"}),
    "truncated": forged({"sub": "alice"})[:-5],
    "not a JWT": "hello",
}


@pytest.mark.parametrize("name", BAD_TOKENS)
async def test_bad_tokens_are_refused_over_rest_and_websocket(server: LiveServer, name: str) -> None:
    from websockets.asyncio.client import connect

    bad = BAD_TOKENS[name]
    r = await server.http.get("/sessions", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (name, r.text)
    async with connect(f"{server.ws_url}/ws", additional_headers={"Authorization": f"Bearer {bad}"}) as conn:
        assert (await WsClient(conn).closed())[0] == 4401, name
    good = forged({"sub": "a" * 48})  # the longest user id is fine
    assert (await server.http.get("/sessions", headers={"Authorization": f"Bearer {good}"})).status_code == 200


def test_a_remembered_token_still_expires_and_binds_to_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked tokens are remembered (auth._checked); not past their expiry, nor for another secret."""
    issued = forged({"sub": "alice", "exp": int(time.time()) + 600})
    assert auth.verify_token(SECRET, issued, "ai_bot") == "alice"
    with pytest.raises(Unauthorized, match="invalid access token"):
        auth.verify_token("another-secret-another-secret-xx", issued, "ai_bot")
    later = time.time() + 601
    monkeypatch.setattr(auth, "time", types.SimpleNamespace(time=lambda: later))
    with pytest.raises(Unauthorized, match="access token expired"):
        auth.verify_token(SECRET, issued, "ai_bot")


# Non-members: every documented operation and every inbound frame, found from the document and the union.

CREATES = {("post", "/sessions")}  # names a new session: an existing id is 409 for anyone (SPEC §9)
OBJECT_IDS = ("message_id", "record_id")


def value_for(name: str, schema: dict[str, Any], known: dict[str, Any]) -> Any:
    if name in known:
        return known[name]
    kind = schema.get("type")
    return {"integer": 1, "boolean": True, "array": [], "object": {}}.get(kind, "x") if isinstance(kind, str) else "x"


def fill(schema: dict[str, Any], components: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    """An object for `schema`: every property we know a value for, and every required one."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    props = schema.get("properties", {})
    wanted = [name for name in props if name in known or name in schema.get("required", [])]
    return {name: value_for(name, props[name], known) for name in wanted}


@pytest.fixture
async def foreign(server: LiveServer) -> dict[str, Any]:
    """Ids of a session, its message and its AI record, all someone else's."""
    owner = uid("owner")
    room = await server.room(owner, ai=True)
    sent = await server.send(owner, room, "private")
    return {"session_id": room, "message_id": sent["message_id"], "record_id": sent["ai_record_id"], "owner": owner}


async def test_a_non_member_is_refused_on_every_route(server: LiveServer, foreign: dict[str, Any]) -> None:
    mallory = uid("mallory")
    known = {**{k: foreign[k] for k in ("session_id", *OBJECT_IDS)}, "user_id": mallory, "content": "let me in"}
    known |= {"emoji": "👍", "seq": 1}
    doc = (await server.get("/openapi.json", None)).json()
    components, tried = doc["components"]["schemas"], 0
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            params = op.get("parameters", [])
            names = {p["name"] for p in params}
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            body_value = fill(body, components, known) if body else None
            query: dict[str, Any] = {}
            for p in params:
                if p["in"] == "query" and p.get("explode") and p["schema"].get("type") == "object":
                    query |= fill(p["schema"], components, known)  # a whole query object
                elif p["in"] == "query" and (p["name"] in known or p.get("required")):
                    query[p["name"]] = value_for(p["name"], p["schema"], known)
            named = names | set(query) | set(body_value or {})
            if op.get("security") == [] or (method, path) in CREATES or not named & {"session_id", *OBJECT_IDS}:
                continue  # open, creating, or about the caller's own things
            url = path.format(**{n: known[n] for n in names if f"{{{n}}}" in path})
            r = await server.http.request(
                method, url, params=query, json=body_value, headers={"Authorization": f"Bearer {token(mallory)}"}
            )
            # SPEC §9: a session the client names → 403; an object fetched by its own id → 404
            expected = 403 if "session_id" in named else 404
            assert r.status_code == expected, (method, path, query, body_value, r.status_code, r.text)
            tried += 1
    assert tried >= 9
    listing = await server.get("/message/list", foreign["owner"], params={"session_id": foreign["session_id"]})
    assert [m["msg_content"] for m in listing.json()["messages"]][-1] == "private"  # mallory stored nothing


async def test_a_non_member_is_refused_on_every_frame(server: LiveServer, foreign: dict[str, Any]) -> None:
    known = {
        "session_id": foreign["session_id"],
        "record_id": foreign["record_id"],
        "message_id": foreign["message_id"],
        "content": "hi",
        "after_seq": 0,
        "seq": 1,
        "emoji": "👍",
    }
    tried = 0
    async with server.ws(uid("mallory")) as ws:
        for model in typing.get_args(Inbound):
            fields = set(model.model_fields)
            if not fields & {"session_id", *OBJECT_IDS}:
                continue  # a frame about nothing of anyone's (ping)
            frame = {"type": model.model_fields["type"].annotation.__args__[0]}
            frame |= {name: known[name] for name in fields if name in known}
            answer = await ws.request(frame)
            expected = "forbidden" if "session_id" in fields else "not_found"
            assert answer["type"] == "error" and answer["code"] == expected, (frame, answer)
            tried += 1
        await ws.nothing_more()
    assert tried >= 3


# CORS: only as configured.


async def test_no_cors_headers_without_cors_origins(server: LiveServer) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in (await server.http.get("/health", headers=origin)).headers
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    r = await server.http.options("/message/send", headers=preflight)
    assert not any(h.startswith("access-control-") for h in r.headers), r.headers


async def test_cors_allows_the_configured_origin_only(make_server: ServerFactory) -> None:
    server = await make_server(cors_origins="https://chat.example")
    good, bad = {"Origin": "https://chat.example"}, {"Origin": "https://evil.example"}
    r = await server.http.get("/health", headers=good)
    assert r.headers["access-control-allow-origin"] == "https://chat.example"
    assert "access-control-allow-origin" not in (await server.http.get("/health", headers=bad)).headers
    asks = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = await server.http.options("/message/send", headers={**good, **asks})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://chat.example"
    refused = await server.http.options("/message/send", headers={**bad, **asks})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


# Logs at INFO: no token, no secret, no message text, through REST, WebSocket, a reply and refusals.


async def test_no_token_secret_or_text_in_the_logs(
    make_server: ServerFactory, fake_llm: FakeLLM, capfd: pytest.CaptureFixture[str]
) -> None:
    fake_llm.reply = "the-model-says-swordfish in its reply"
    server = await make_server(
        log_level="INFO", ai_provider="openai", ai_api_key="sk-secret-key-42", ai_base_url=fake_llm.url
    )
    alice, words = uid(), ["launch-code-0000", "launch-code-1111", "launch-code-2222", "launch-code-3333"]
    room = await server.room(alice, ai=True)
    async with server.ws(alice) as ws:
        await server.send(alice, room, words[0])
        await ws.recv_type("ai_reply")
        await ws.request({"type": "send_message", "session_id": room, "content": words[1]})
        await ws.recv_type("ai_reply")
        fake_llm.mode = "cut"
        await ws.request({"type": "send_message", "session_id": room, "content": words[2]})
        await ws.recv_type("ai_reply_error")
    bad_token = forged({"sub": "alice"}, "a-wrong-secret-0123456789abcdef0123")
    await server.http.get("/sessions", headers={"Authorization": f"Bearer {bad_token}"})
    await server.post("/message/send", alice, {"session_id": "no such room!", "content": words[3]})
    await server.post("/message/send", alice, {"session_id": room, "content": words[3] + "\x00"})
    out, err = capfd.readouterr()
    logged = out + err
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "reply ended" for line in lines)  # the log was captured
    for secret in [*words, "swordfish", SECRET, "sk-secret-key-42", bad_token, token(alice), "eyJ"]:
        assert secret not in logged, secret
