"""What the bus carries: one thing that happened in a session, typed and serialisable.

An event names its session, its `seq` when it is a stored row (§10), the frame every member's
sockets receive, and who joined or left (the hub's subscriptions follow them). The socket that
caused a stored row (`origin`) is answered with `message_sent` instead of `new_message`.

Encoded, an event is one JSON text of at most MAX_ENCODED bytes, so that it fits a PostgreSQL
NOTIFY. A bigger one goes by reference: the ids of what it names, for the receiver to load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from imsvc.models import AIChatRecord, RecordStatus
from imsvc.schemas import (
    AiReplyDeltaFrame,
    AiReplyErrorFrame,
    AiReplyFrame,
    AiReplyStartFrame,
    ErrorDetail,
    FrameId,
    MessageOut,
    NewMessageFrame,
    ReadMarkerFrame,
    ServerFrame,
    TypingNotice,
    final_reply_frame,
    sent_frame,
)

MAX_ENCODED = 8000

EventFrame = (
    NewMessageFrame
    | AiReplyStartFrame
    | AiReplyDeltaFrame
    | AiReplyFrame
    | AiReplyErrorFrame
    | ReadMarkerFrame
    | TypingNotice
)
_frames: TypeAdapter[EventFrame] = TypeAdapter(Annotated[EventFrame, Field(discriminator="type")])


@dataclass(frozen=True, slots=True)
class Event:
    session_id: str
    frame: EventFrame | None = None
    seq: int | None = None
    origin: str | None = None  # the id of the socket that caused it
    ref: FrameId | None = None  # the origin frame's id, echoed in its `message_sent`
    joined: tuple[str, ...] = ()  # users who became members: they receive this event and what follows
    left: tuple[str, ...] = ()  # users who stopped being members: they receive this event, nothing after
    skip_user: str | None = None  # a user none of whose sockets receive it (typing: not the typist)

    def answer(self) -> ServerFrame | None:
        """What the origin socket receives instead of `frame`: the direct answer, with the frame's `ref`."""
        if isinstance(self.frame, NewMessageFrame):
            return sent_frame(self.frame.message, self.ref, duplicate=False)
        if isinstance(self.frame, ReadMarkerFrame):
            return self.frame.model_copy(update={"ref": self.ref})
        return self.frame


@dataclass(frozen=True, slots=True)
class Presence:
    """A user's first socket opened or last one closed: for every user who shares one of `sessions` with them."""

    user_id: str
    online: bool
    sessions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Asks the process that runs a reply to stop it (a cancel that reached another process)."""

    record_id: str


Message = Event | Presence | Cancel


@dataclass(frozen=True, slots=True)
class Reference:
    """An event too big to travel whole: the receiver loads `message_id` (a stored row) or `record_id`
    (a concluded reply) and rebuilds it."""

    session_id: str
    seq: int | None
    origin: str | None
    ref: FrameId | None
    message_id: str | None = None
    record_id: str | None = None


def encode(event: Event) -> list[str]:
    """The event as JSON texts of at most MAX_ENCODED bytes: one, or a reference, or (for a long delta,
    which is not stored and cannot be loaded) several consecutive deltas."""
    head: dict[str, Any] = {"s": event.session_id, "q": event.seq, "o": event.origin, "r": event.ref}
    if event.joined or event.left:
        head |= {"j": list(event.joined), "l": list(event.left)}
    if event.skip_user is not None:
        head["x"] = event.skip_user
    whole = json.dumps({**head, "f": event.frame.model_dump(mode="json") if event.frame else None})
    if len(whole.encode()) < MAX_ENCODED:  # NOTIFY takes payloads shorter than 8000 bytes
        return [whole]
    frame = event.frame
    if isinstance(frame, AiReplyDeltaFrame):
        half = len(frame.delta) // 2
        first = frame.model_copy(update={"delta": frame.delta[:half]})
        rest = frame.model_copy(update={"delta": frame.delta[half:], "offset": frame.offset + half})
        return [text for part in (first, rest) for text in encode(Event(event.session_id, part))]
    if isinstance(frame, NewMessageFrame):
        return [json.dumps({**head, "m": frame.message.message_id})]
    if isinstance(frame, AiReplyFrame | AiReplyErrorFrame):
        return [json.dumps({**head, "c": frame.record_id})]
    raise ValueError(f"an event of {type(frame).__name__} cannot be encoded within {MAX_ENCODED} bytes")


def decode(text: str) -> Event | Reference:
    data = json.loads(text)
    if "m" in data or "c" in data:
        return Reference(data["s"], data["q"], data["o"], data["r"], data.get("m"), data.get("c"))
    frame = _frames.validate_python(data["f"]) if data["f"] is not None else None
    return Event(data["s"], frame, data["q"], data["o"], data["r"], tuple(data.get("j", ())), tuple(data.get("l", ())))


def encode_message(message: Message) -> list[str]:
    """Any bus message as NOTIFY payloads."""
    if isinstance(message, Presence):
        return [json.dumps({"p": message.user_id, "on": message.online, "ss": list(message.sessions)})]
    if isinstance(message, Cancel):
        return [json.dumps({"cancel": message.record_id})]
    return encode(message)


def decode_message(text: str) -> Event | Reference | Presence | Cancel:
    data = json.loads(text)
    if "p" in data:
        return Presence(data["p"], data["on"], tuple(data["ss"]))
    if "cancel" in data:
        return Cancel(data["cancel"])
    return decode(text)


def stored_final_frame(record: AIChatRecord, message: MessageOut | None) -> AiReplyFrame | AiReplyErrorFrame:
    """The final frame of a finished record, as its members were sent it."""
    error = None
    if record.status == RecordStatus.FAILED:
        code, _, detail = (record.error_message or "internal: failed").partition(": ")
        error = ErrorDetail(code=code, message=detail or code)
    return final_reply_frame(
        record.record_id,
        record.session_id,
        record.user_message_id,
        record.response_content or "",
        message,
        record.finish_reason or "stop",
        error,
    )
