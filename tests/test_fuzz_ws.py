"""Generated bad frames over WebSocket (hypothesis): each is answered, never breaks the socket, stores nothing.

Frames are drawn from the inbound frame union (schemas.Inbound: its types and field names, so that a
frame added later is fuzzed too) with values of every JSON type, integers past 64 bits, lone
surrogates, NUL and other control characters; and from random JSON, deep nesting, text that is not
JSON, binary frames, and sizes around the 64 KiB limit. For each: the answer is `error` frames (or
the answer of a frame that happened to be valid) with `ref` echoed when the id can be, then the
socket still answers a ping; or, over 64 KiB, the close code 1009. Nothing is stored but what was
acknowledged, and the server logs no error or traceback.
"""

from __future__ import annotations

import json
import re
import typing
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imsvc.schemas import ID_PATTERN, INBOUND_TYPES, Inbound
from tests.helpers import LiveServer, uid

EXAMPLES = 350
MAX_FRAME = 65536
ERROR_CODES = {
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "payload_too_large",
    "validation_error",
    "rate_limited",
    "busy",
    "not_ready",
    "invalid_json",
    "unknown_type",
}  # SPEC §9, less `internal`: a bad frame is the client's fault, never the server's
ANSWERS = {"error", "pong", "message_sent", "sync_result"}  # the sessions here have no assistant: no reply frames
FIELDS = sorted({name for model in typing.get_args(Inbound) for name in model.model_fields} - {"type"})
OWN, FOREIGN = "own", "foreign"  # stand-ins, replaced per example by the user's own session and someone else's

texts = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(max_codepoint=0x1F), max_size=5),  # NUL and the other control characters
    st.lists(st.sampled_from(["\ud800", "\udfff", "\x00", "\x7f", "a", " ", "\n", "é", "😀"]), max_size=6).map("".join),
)
numbers = st.one_of(
    st.integers(-10, 10),
    st.integers(min_value=2**63 - 2, max_value=2**80),  # past int64
    st.integers(max_value=-(2**63)),
    st.floats(),
)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3)
)
# Random text is almost never a valid session id; when it is, it would create a session (with the assistant).
not_an_id = texts.filter(lambda t: re.fullmatch(ID_PATTERN, t) is None)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "session_id": st.sampled_from([OWN, FOREIGN]) | not_an_id | json_values.filter(lambda v: not isinstance(v, str)),
    "content": st.just("hello") | texts | json_values,
    "after_seq": st.integers(0, 5) | numbers | json_values,
}
typed_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(INBOUND_TYPES)) | texts | json_values},
    optional={name: field_values.get(name, json_values) for name in [*FIELDS, "id"]},
)


def as_text(value: Any, ascii_only: bool) -> str:
    """JSON text; raw non-ASCII characters when asked and when they can be sent (a lone surrogate cannot)."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.sampled_from(["typed", "json", "deep", "raw", "binary", "size"]))
    event(kind)
    if kind == "typed":
        frame: str = as_text(draw(typed_frames), draw(st.booleans()))
    elif kind == "json":
        frame = as_text(draw(json_values), draw(st.booleans()))
    elif kind == "deep":
        depth = draw(st.integers(100, 30000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        field = draw(st.sampled_from(["id", "content", "session_id", "after_seq", "x"]))
        inner = opener * depth + ("1" if opener != "[" else "") + closer * depth
        frame = f'{{"type": "{draw(st.sampled_from(sorted(INBOUND_TYPES)))}", "{field}": {inner}}}'
    elif kind == "raw":
        frame = draw(st.text(max_size=50))
    elif kind == "binary":
        return draw(st.binary(max_size=50) | typed_frames.map(lambda f: as_text(f, False).encode("utf-8", "replace")))
    else:  # sizes around the limit, in bytes, with one- and two-byte padding
        size, pad = draw(st.integers(MAX_FRAME - 4, MAX_FRAME + 4)), draw(st.sampled_from(["x", "é"]))
        head, tail = '{"type": "ping", "id": "big", "pad": "', '"}'
        room = size - len(head) - len(tail)
        frame = head + pad * (room // len(pad.encode())) + "x" * (room % len(pad.encode())) + tail
    return draw(st.sampled_from([frame, frame.encode()])) if kind != "raw" else frame


def expected_ref(frame: str | bytes) -> Any:
    """What the server must echo as `ref`: the id when it is an integer or a string it can send back."""
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    ref = data.get("id") if isinstance(data, dict) else None
    if isinstance(ref, bool) or not isinstance(ref, str | int):
        return None
    try:
        ref.encode() if isinstance(ref, str) else None
    except UnicodeEncodeError:
        return None
    return ref


def substitute(frame: str | bytes, names: dict[str, str]) -> str | bytes:
    for stand_in, name in names.items():
        if isinstance(frame, str):
            frame = frame.replace(f'"{stand_in}"', f'"{name}"')
        else:
            frame = frame.replace(f'"{stand_in}"'.encode(), f'"{name}"'.encode())
    return frame


@pytest.fixture
async def foreign_room(server: LiveServer) -> tuple[str, str]:
    """(owner, session) of a session the fuzzing users are not in."""
    owner = uid("owner")
    return owner, await server.room(owner)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same frames on every run; a failure is reproducible as it is
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frame=frames())
async def test_every_bad_frame_is_answered_and_changes_nothing(
    server: LiveServer, foreign_room: tuple[str, str], capfd: pytest.CaptureFixture[str], frame: str | bytes
) -> None:
    user, (owner, foreign) = uid("fz"), foreign_room
    capfd.readouterr()  # the log from here on is this frame's
    # The user's own session (send_message without session_id), without the assistant: every message stored
    # in it is one that was acknowledged, and no reply frames interleave with the answers.
    r = await server.post("/sessions", user, {"session_id": user, "ai_enabled": False})
    assert r.status_code == 201
    frame = substitute(frame, {OWN: user, FOREIGN: foreign})
    acknowledged = 0
    async with server.ws(user) as ws:
        await ws.conn.send(frame)
        if len(frame if isinstance(frame, bytes) else frame.encode()) > MAX_FRAME:
            assert (await ws.closed())[0] == 1009
        else:
            probe, ref = uuid.uuid4().hex, expected_ref(frame)
            await ws.send({"type": "ping", "id": probe})
            while (answer := await ws.recv()).get("ref") != probe:
                assert answer["type"] in ANSWERS, answer
                assert answer.get("ref") == ref, (answer, ref)
                if answer["type"] == "error":
                    assert answer["code"] in ERROR_CODES and isinstance(answer["message"], str), answer
                if answer["type"] == "message_sent" and not answer["duplicate"]:
                    acknowledged += 1
            assert answer["type"] == "pong"  # and so the socket is still open
    sessions = (await server.get("/sessions", user)).json()["sessions"]
    assert [(s["session_id"], s["last_seq"]) for s in sessions] == [(user, acknowledged)]
    assert (await server.get("/message/list", owner, params={"session_id": foreign})).json()["total"] == 0
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and '"level": "error"' not in out, out + err
