"""What the model is sent: the system prompt, then the session's history as chat roles (SPEC §6.2, §9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from imsvc.llm import ChatMessages


class Turn(Protocol):
    """A stored message as the context needs it (an ORM object or a Core row)."""

    @property
    def from_user_id(self) -> str: ...

    @property
    def msg_content(self) -> str: ...


def build_context(
    history: Sequence[Turn], humans: int, bot_user_id: str, system_prompt: str, max_chars: int
) -> ChatMessages:
    """`history` ends with the triggering message, which is always kept; older ones are dropped first to
    fit `max_chars` (counted as sent, prefixes included, the system prompt not). With more than one human
    member (`humans`), user messages say who wrote them."""
    prefixed = humans > 1
    turns: ChatMessages = []
    for item in history:
        if item.from_user_id == bot_user_id:
            turns.append({"role": "assistant", "content": item.msg_content})
        else:
            content = f"{item.from_user_id}: {item.msg_content}" if prefixed else item.msg_content
            turns.append({"role": "user", "content": content})
    budget = max_chars
    kept: ChatMessages = []
    for turn in reversed(turns):
        budget -= len(turn["content"])
        if kept and budget < 0:
            break
        kept.append(turn)
    return [{"role": "system", "content": system_prompt}, *reversed(kept)]
