"""The text rules as the OpenAPI document states them (patterns) and as the server applies them (validators)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from imsvc.schemas import CONTENT_PATTERN, MAX_CONTENT, TEXT_PATTERN, Content, Title

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
