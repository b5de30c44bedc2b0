"""Every route's error codes, in the order of precedence: 404 route → 401 → 413 → 400 → 422."""

from __future__ import annotations

import pytest

from tests.helpers import LiveServer, auth, uid

BODY_ROUTES = ["/message/send", "/sessions", "/sessions/s1/members", "/ai/regenerate"]
AUTHENTICATED = [
    ("POST", "/message/send"),
    ("GET", "/message/list?session_id=s1"),
    ("GET", "/message/msg_x"),
    ("POST", "/sessions"),
    ("GET", "/sessions"),
    ("POST", "/sessions/s1/members"),
    ("GET", "/ai/records?session_id=s1"),
    ("GET", "/ai/records/record_x"),
    ("POST", "/ai/records/record_x/cancel"),
    ("POST", "/ai/regenerate"),
    ("GET", "/ai/records/record_x/stream"),
]


@pytest.mark.parametrize(("method", "path"), AUTHENTICATED)
async def test_every_authenticated_route_wants_a_token(server: LiveServer, method: str, path: str) -> None:
    r = await server.http.request(method, path, content=b"{}")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_every_body_route_checks_size_then_json_then_fields(server: LiveServer, path: str) -> None:
    headers = auth(uid())
    too_big = await server.http.post(path, content=b"[" + b" " * 65536 + b"]", headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    bad_json = await server.http.post(path, content=b'{"session_id": ', headers=headers)
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    bad_fields = await server.http.post(path, json={"session_id": 7, "user_id": [], "message_id": {}}, headers=headers)
    assert bad_fields.status_code == 422 and bad_fields.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("path", ["/nowhere", "/message", "/ai", "/sessions/s1/nothing"])
async def test_unknown_routes_are_404_without_a_token(server: LiveServer, path: str) -> None:
    for method in ("GET", "POST"):
        r = await server.http.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path)
    assert (await server.http.get("/static/nothing.js")).status_code == 404


async def test_open_routes_need_no_token(server: LiveServer) -> None:
    for path in ("/health", "/ready", "/metrics", "/openapi.json", "/", "/static/app.js", "/static/style.css"):
        assert (await server.http.get(path)).status_code == 200, path
