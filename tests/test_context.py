"""What the model is sent, as a pure function of the history."""

from __future__ import annotations

from imsvc.context import build_context
from imsvc.models import Message

BOT = "ai_bot"


def msg(author: str, text: str) -> Message:
    return Message(from_user_id=author, msg_content=text)


def test_roles_and_order_with_one_human() -> None:
    history = [msg("alice", "hi"), msg(BOT, "hello"), msg("alice", "how are you?")]
    assert build_context(history, 1, BOT, "sys", 1000) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    ]


def test_authors_are_named_when_several_humans_talk() -> None:
    history = [msg("alice", "hi"), msg(BOT, "hello"), msg("bob", "me too")]
    context = build_context(history, 2, BOT, "sys", 1000)
    assert [m["content"] for m in context[1:]] == ["alice: hi", "hello", "bob: me too"]


def test_the_budget_counts_prefixes_and_drops_the_oldest_first() -> None:
    history = [msg("alice", "a" * 10), msg("bob", "b" * 10), msg("alice", "c" * 10)]
    # each turn is 17 characters with its "alice: "/"bob: " prefix (15 for bob)
    context = build_context(history, 2, BOT, "a long system prompt is not counted", 32)
    assert [m["content"] for m in context[1:]] == ["bob: " + "b" * 10, "alice: " + "c" * 10]
    assert [m["content"] for m in build_context(history, 2, BOT, "sys", 31)[1:]] == ["alice: " + "c" * 10]


def test_the_triggering_message_is_kept_even_over_the_budget() -> None:
    history = [msg("alice", "old"), msg("alice", "x" * 50)]
    assert build_context(history, 1, BOT, "sys", 10)[1:] == [{"role": "user", "content": "x" * 50}]
