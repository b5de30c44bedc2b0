"""The rules of a change to a message (SPEC §10), as pure functions of the target's folded state.

Who may edit, delete and react; which changes alter nothing (and store no event); how a change is
folded into its target. The sequencer applies them, in seq order, to the rows it has locked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from imsvc.errors import Conflict, Forbidden, ValidationFailed

MAX_DISTINCT_REACTIONS = 20


class Kind(StrEnum):
    TEXT = "TEXT"
    EDIT = "EDIT"
    DELETE = "DELETE"
    REACT = "REACT"
    UNREACT = "UNREACT"
    MEMBER = "MEMBER"
    SETTINGS = "SETTINGS"


@dataclass(slots=True)
class Target:
    """A message as the batch sees it: its stored row, then each change of the batch folded in."""

    id: int
    message_id: str
    session_id: str
    seq: int
    from_user_id: str
    msg_type: str
    msg_content: str
    client_msg_id: str | None
    created_at: datetime
    target_message_id: str | None
    data: dict[str, Any] | None
    edited_at: datetime | None
    deleted_at: datetime | None
    reactions: dict[str, list[str]] = field(default_factory=dict)
    touched: bool = False


def check(kind: Kind, target: Target, actor: str, actor_is_owner: bool) -> None:
    """Raise when the actor may not make this change; in the order §10 gives (membership is checked before)."""
    if kind is Kind.EDIT and target.from_user_id != actor:
        raise Forbidden("only the author may edit a message")
    if kind is Kind.DELETE and target.from_user_id != actor and not actor_is_owner:
        raise Forbidden("only the author or the session's owner may delete a message")
    if target.msg_type != Kind.TEXT:
        raise ValidationFailed(f"a {target.msg_type} row cannot be changed")
    if kind in (Kind.EDIT, Kind.REACT, Kind.UNREACT) and target.deleted_at is not None:
        raise Conflict("the message was deleted")


def changes_anything(kind: Kind, target: Target, actor: str, value: str) -> bool:
    """False for the idempotent cases: answered with the current state, and no event stored."""
    match kind:
        case Kind.EDIT:
            return target.msg_content != value
        case Kind.DELETE:
            return target.deleted_at is None
        case Kind.REACT:
            return actor not in target.reactions.get(value, [])
        case Kind.UNREACT:
            return actor in target.reactions.get(value, [])
    return True


def fold(kind: Kind, target: Target, actor: str, value: str, at: datetime) -> None:
    """Apply the change to the target in place (after `check` and `changes_anything`)."""
    target.touched = True
    match kind:
        case Kind.EDIT:
            target.msg_content, target.edited_at = value, at
        case Kind.DELETE:
            target.msg_content, target.deleted_at, target.reactions = "", at, {}
        case Kind.REACT:
            target.reactions = {**target.reactions, value: [*target.reactions.get(value, []), actor]}
        case Kind.UNREACT:
            left = [user for user in target.reactions[value] if user != actor]
            target.reactions = {k: v for k, v in target.reactions.items() if k != value}
            if left:
                target.reactions[value] = left


def apply(kind: Kind, target: Target, actor: str, actor_is_owner: bool, value: str, at: datetime) -> bool:
    """Check and fold one change; whether it changed anything. Raises the error the actor is answered."""
    check(kind, target, actor, actor_is_owner)
    if not changes_anything(kind, target, actor, value):
        return False
    full = len(target.reactions) >= MAX_DISTINCT_REACTIONS
    if kind is Kind.REACT and value not in target.reactions and full:  # the 21st distinct emoji
        raise ValidationFailed(f"a message has at most {MAX_DISTINCT_REACTIONS} distinct reactions")
    fold(kind, target, actor, value, at)
    return True
