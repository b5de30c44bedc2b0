"""Operations: health, readiness, metrics."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ServerFactory
from tests.helpers import LiveServer, uid


async def test_health_and_ready_need_no_token(server: LiveServer) -> None:
    health = await server.get("/health", None)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "version": health.json()["version"], "ai_provider": "echo"}
    ready = await server.get("/ready", None)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_ready_is_503_when_the_database_is_gone(make_server: ServerFactory) -> None:
    server = await make_server(database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none")
    r = await server.get("/ready", None)
    assert r.status_code == 503 and r.json() == {"status": "db_unavailable"}
    alice = uid()
    sent = await server.post("/message/send", alice, {"session_id": "s1", "content": "hello?"})
    assert sent.status_code == 503 and sent.json()["error"]["code"] == "not_ready"
    async with server.ws(alice) as ws:
        answer = await ws.request({"type": "send_message", "content": "hello?"})
        assert answer["type"] == "error" and answer["code"] == "not_ready"


async def test_ready_is_503_while_draining(server: LiveServer) -> None:
    alice = uid()
    async with server.ws(alice) as ws:
        await server.app.state.services.drain()
        assert (await ws.closed())[0] == 1012
    r = await server.get("/ready", None)
    assert r.status_code == 503 and r.json() == {"status": "draining"}
    async with server.ws(alice) as late:
        assert (await late.closed())[0] == 1012


async def test_dev_token_only_in_dev_mode(make_server: ServerFactory) -> None:
    dev = await make_server()
    r = await dev.post("/dev/token", None, {"user_id": "alice"})
    assert r.status_code == 200 and r.json()["token"]
    assert (await dev.post("/dev/token", None, {"user_id": "not ok"})).status_code == 422
    assert (await dev.post("/dev/token", None, {"user_id": "ai_bot"})).status_code == 422
    prod = await make_server(dev_mode=False)
    assert (await prod.post("/dev/token", None, {"user_id": "alice"})).status_code == 404


async def test_metrics_count_what_happens(server: LiveServer) -> None:
    alice = uid()
    await server.get("/health", None)
    async with server.ws(alice) as ws:
        await ws.request({"type": "send_message", "content": "count me"})
        await ws.recv_type("ai_reply")
        text = (await server.get("/metrics", None)).text
    assert "imsvc_open_websockets 1.0" in text
    assert "imsvc_messages_stored_total 2.0" in text  # the message and the echo reply
    assert 'imsvc_ai_replies_total{status="1"} 1.0' in text
    assert "imsvc_ai_first_token_seconds_count 1.0" in text
    assert "imsvc_http_request_seconds_count" in text


async def test_chat_page_is_served(server: LiveServer) -> None:
    r = await server.get("/", None)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert (await server.get("/static/app.js", None)).status_code == 200
    assert (await server.post("/nowhere", None, {})).status_code == 404


async def test_openapi_describes_every_route(server: LiveServer) -> None:
    from starlette.routing import Route

    r = await server.get("/openapi.json", None)
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    served = {
        (method.lower(), route.path)
        for route in server.app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == described
    schemas = doc["components"]["schemas"]

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    found = refs(doc)
    assert found and all(ref.removeprefix("#/components/schemas/") in schemas for ref in found)
    send = doc["paths"]["/message/send"]["post"]
    assert send["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SendMessageIn")
    assert {"201", "200", "401", "413", "422"} <= set(send["responses"])


async def test_logs_carry_context_but_no_content_or_token(
    make_server: ServerFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    server = await make_server(log_level="INFO")
    alice = uid()
    secret_text = "the-launch-code-is-0000"
    async with server.ws(alice) as ws:
        await ws.request({"type": "send_message", "content": secret_text})
        await ws.recv_type("ai_reply")
    out = capfd.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ended = [line for line in lines if line.get("event") == "reply ended"]
    assert ended and ended[0]["user_id"] == alice and ended[0]["session_id"] == alice and ended[0]["record_id"]
    assert secret_text not in out and "eyJ" not in out and server.settings.secret not in out  # eyJ: any JWT


async def test_each_reply_logs_its_own_context(make_server: ServerFactory, capfd: pytest.CaptureFixture[str]) -> None:
    server = await make_server(log_level="INFO")
    alice, bob = uid(), uid()
    room = await server.room(alice, bob, ai=True)
    async with server.ws(alice) as ws:
        for user in (alice, bob):  # one session: one worker runs both replies
            sent = await server.send(user, room, f"from {user}")
            while (await ws.recv_type("ai_reply"))["user_message_id"] != sent["message_id"]:
                pass
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    ended = [line for line in lines if line.get("event") == "reply ended"]
    assert [line["user_id"] for line in ended] == [alice, bob]
    assert all(line["session_id"] == room and "request_id" not in line for line in ended)
