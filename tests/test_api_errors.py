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


# Input that once reached the database or the JSON parser as a 500: now 4xx, alike on SQLite and PostgreSQL.

BAD_TEXT = ["\x00", "a\x00b", "\x07", "a\x1bb", "\x1f"]  # NUL and other C0 controls (tab, LF, CR are text)


async def test_control_characters_are_refused_in_contents_titles_and_ids(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    for bad in BAD_TEXT:
        for body in (
            {"session_id": room, "content": bad},
            {"session_id": room, "content": "ok", "client_msg_id": bad},
            {"session_id": room + bad, "content": "ok"},
        ):
            r = await server.post("/message/send", alice, body)
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (body, r.text)
        r = await server.post("/sessions", alice, {"title": f"my{bad}title"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    listing = await server.get("/message/list", alice, params={"session_id": room})
    assert listing.json()["total"] == 0  # nothing was stored


async def test_text_with_tabs_and_line_breaks_is_stored_as_sent(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    sent = await server.send(alice, room, "line one\r\n\tline two\n", client_msg_id="c\u00e9😀")
    assert sent["msg_content"] == "line one\r\n\tline two\n" and sent["client_msg_id"] == "c\u00e9😀"
    r = await server.post("/sessions", alice, {"title": "tab\there\nand there"})
    assert r.status_code == 201 and r.json()["title"] == "tab\there\nand there"


@pytest.mark.parametrize("blank", [" ", "\u3000", "\u00a0 \u2003", "\n\t\r", "\u2028"])
async def test_blank_content_of_any_whitespace_is_refused(server: LiveServer, blank: str) -> None:
    r = await server.post("/message/send", uid(), {"session_id": uid("s"), "content": blank})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    "path",
    ["/message/%00", "/ai/records/%00", "/ai/records/a%00b/stream", "/message/%E2%80%A8", "/ai/records/" + "r" * 65],
)
async def test_a_malformed_id_in_the_path_is_422(server: LiveServer, path: str) -> None:
    r = await server.get(path, uid())
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
    assert (await server.post("/ai/records/%00/cancel", uid())).status_code == 422


async def test_a_bad_session_id_in_the_path_is_named_as_such(server: LiveServer) -> None:
    r = await server.post("/sessions/bad%00id/members", uid(), {"user_id": uid()})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("session_id: "), r.text


async def test_integers_past_64_bits_in_queries_are_422(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    for value in (2**63, 2**64 + 1, -(2**63) - 1, 10**40):
        for name in ("after_seq", "before_seq", "limit", "page", "page_size"):
            keyset = {"after_seq": 0} if name == "limit" else {}
            r = await server.get("/message/list", alice, params={"session_id": room, name: str(value), **keyset})
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (name, value, r.text)
        r = await server.get("/ai/records", alice, params={"session_id": room, "limit": str(value)})
        assert r.status_code == 422


async def test_the_largest_bounds_are_answered(server: LiveServer) -> None:
    alice = uid()
    room = await server.room(alice)
    await server.send(alice, room, "one")
    for params in ({"after_seq": 2**63 - 1}, {"before_seq": 2**63 - 1}, {"page": 2**63 // 100, "page_size": 100}):
        r = await server.get("/message/list", alice, params={"session_id": room, **params})
        assert r.status_code == 200, (params, r.text)
    assert [m["msg_content"] for m in r.json()["messages"]] == []


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_deeply_nested_json_is_400(server: LiveServer, path: str) -> None:
    for depth in (1000, 20000):
        r = await server.http.post(path, content=b"[" * depth + b"]" * depth, headers=auth(uid()))
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text
    big = b'{"session_id": "s", "content": ' + b"1" * 5000 + b"}"  # past Python's 4300 digits
    assert (await server.http.post(path, content=big, headers=auth(uid()))).status_code == 400


@pytest.mark.parametrize("value", ["yes", "true", 0, 1, None, [], "1"])
async def test_json_bodies_are_strict(server: LiveServer, value: object) -> None:
    r = await server.post("/sessions", uid(), {"ai_enabled": value})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
    assert (await server.post("/sessions", uid(), {"ai_enabled": False})).json()["ai_enabled"] is False


async def test_a_405_names_every_method_of_the_path(server: LiveServer) -> None:
    from starlette.routing import Route

    methods: dict[str, set[str]] = {}
    for route in server.app.routes:
        if isinstance(route, Route) and route.methods:
            methods.setdefault(route.path, set()).update(route.methods)
    assert methods["/sessions"] >= {"GET", "POST"}
    for path, allowed in methods.items():
        url = path.replace("{message_id}", "msg_x").replace("{record_id}", "record_x").replace("{session_id}", "s1")
        url = url.replace("{user_id}", "u1").replace("{emoji}", "x")
        if url in ("/message/send", "/message/list"):  # their other methods reach /message/{message_id}
            continue
        r = await server.http.request("TRACE", url, headers=auth(uid()))  # a method no route takes
        assert r.status_code == 405, (path, r.status_code)
        assert set(r.headers["allow"].replace(" ", "").split(",")) == allowed, (path, r.headers["allow"])


async def test_errors_keep_the_connection_alive(server: LiveServer) -> None:
    """A refused request is answered, not crashed on: the client's keep-alive connection stays usable."""
    alice = uid()
    for _ in range(3):
        r = await server.http.post("/message/send", content=b"[" * 5000, headers=auth(alice))
        assert r.status_code in (400, 422) and r.headers.get("connection") != "close"
    assert (await server.get("/health", None)).status_code == 200
