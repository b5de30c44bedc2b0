"""The text rules as the OpenAPI document states them (patterns) and as the server applies them (validators);
history pages rendered from plain values as the models would render them."""

from __future__ import annotations

import re
from datetime import UTC
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from imsvc.schemas import (
    CONTENT_PATTERN,
    MAX_CONTENT,
    TEXT_PATTERN,
    Content,
    MessagePage,
    SyncResultFrame,
    Title,
    message_out,
    message_wire,
    page_json,
    sync_result_text,
)

CASES = [(CONTENT_PATTERN, TypeAdapter(Content)), (TEXT_PATTERN, TypeAdapter(Title))]


def documented(pattern: str, text: str) -> bool:
    """The pattern as JSON Schema reads it: anchored at both ends (Python's `$` would also take a final newline)."""
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), text) is not None


def served(adapter: TypeAdapter[str], text: str) -> bool:
    try:
        adapter.validate_python(text)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("pattern", "adapter"), CASES)
def test_pattern_and_validator_agree_on_every_character(pattern: str, adapter: TypeAdapter[str]) -> None:
    for code in [*range(0x3100), 0xFEFF, 0xFFFD, 0x1F600, 0x10FFFF]:
        text = chr(code)
        assert documented(pattern, text) == served(adapter, text), hex(code)
        assert documented(pattern, f"a{text}b") == served(adapter, f"a{text}b"), hex(code)


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(st.characters(max_codepoint=0x3100) | st.sampled_from("\t\n\r \x00\x1f\u3000\u00a0"), max_size=12))
def test_pattern_and_validator_agree_on_any_text(text: str) -> None:
    for pattern, adapter in CASES:
        assert documented(pattern, text) == served(adapter, text), (pattern, text)


def test_content_length_counts_code_points() -> None:
    adapter = TypeAdapter(Content)
    assert served(adapter, "😀" * MAX_CONTENT) and not served(adapter, "😀" * (MAX_CONTENT + 1))


# History pages are rendered from plain values (message_wire), other answers from models (message_out):
# the same bytes either way, for any stored row.

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)  # the database holds no lone surrogate
_UTC = st.datetimes(timezones=st.just(UTC))
_WHEN = _UTC | _UTC.map(lambda d: d.replace(microsecond=0))  # isoformat leaves out a zero fraction
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_ROW = st.fixed_dictionaries(
    {
        "id": st.integers(1, 2**63 - 1),
        "message_id": _TEXT,
        "session_id": _TEXT,
        "seq": st.integers(0, 2**63 - 1),
        "from_user_id": _TEXT,
        "msg_type": st.sampled_from(["TEXT", "EDIT", "DELETE", "REACT", "UNREACT", "MEMBER"]),
        "msg_content": _TEXT,
        "client_msg_id": st.none() | _TEXT,
        "created_at": _WHEN,
        "target_message_id": st.none() | _TEXT,
        "data": st.none() | st.dictionaries(_TEXT, _JSON, max_size=3),
        "edited_at": st.none() | _WHEN,
        "deleted_at": st.none() | _WHEN,
        "reactions": st.none() | st.dictionaries(_TEXT, st.lists(_TEXT, max_size=3), max_size=3),
    }
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    rows=st.lists(_ROW, max_size=4),
    total=st.integers(0, 2**63 - 1),
    page=st.none() | st.integers(1, 2**40),
    ref=st.none() | st.integers() | _TEXT,
    more=st.booleans(),
)
def test_pages_from_plain_values_are_the_models_json(
    rows: list[dict[str, Any]], total: int, page: int | None, ref: str | int | None, more: bool
) -> None:
    wire = [message_wire(row) for row in rows]
    models = [message_out(SimpleNamespace(**row)) for row in rows]
    expected = MessagePage(messages=models, total=total, page=page, page_size=50, has_more=more)
    assert page_json(wire, total, page, 50, more) == expected.model_dump_json().encode()
    frame = SyncResultFrame(ref=ref, session_id="s", messages=models, has_more=more)
    assert sync_result_text(ref, "s", wire, more) == frame.wire()
