"""Pydantic shapes of what crosses the wire: REST bodies and responses, WebSocket frames."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)
from pydantic_core import to_json

ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,48}$"
# Ids the server makes (msg_…, record_…) are 64 characters at most, of the same characters.
OBJECT_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,64}$"
MAX_CONTENT = 5000
INT64_MAX = 2**63 - 1  # both databases store seqs, pages and limits as 64-bit integers

# Text that people write (contents, titles) may hold tabs and line breaks but no other C0 control
# character: PostgreSQL refuses NUL where SQLite stores it, and both must behave alike. The schema
# states the rules as patterns (classes spelled out, no \s, so that they mean the same in every
# regex dialect); the validators say the same in words. tests/test_schemas.py holds them together.
_TEXT_CHAR = r"[^\u0000-\u0008\u000b\u000c\u000e-\u001f]"
# Not blank: at least one character that str.strip() keeps (the whitespace it strips, listed).
_SHOWN_CHAR = r"[^\u0000-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
TEXT_PATTERN = rf"^{_TEXT_CHAR}*$"
CONTENT_PATTERN = rf"^{_TEXT_CHAR}*{_SHOWN_CHAR}{_TEXT_CHAR}*$"
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# A client's own id: anything printable, no control characters at all.
CLIENT_ID_PATTERN = r"^[^\u0000-\u001f\u007f]{1,64}$"


def _no_controls(value: str) -> str:
    if CONTROL.search(value):
        raise ValueError("must not contain control characters other than tab, line feed and carriage return")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace only")
    return value


def _encodable(value: str) -> str:
    """JSON's \\ud800 escapes can carry a lone surrogate, which can be neither stored nor sent back as UTF-8."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ObjectId = Annotated[str, StringConstraints(pattern=OBJECT_ID_PATTERN)]
# A constrained string refuses a lone surrogate itself (pydantic's string_unicode error).
Content = Annotated[
    str,
    Field(min_length=1, max_length=MAX_CONTENT, json_schema_extra={"pattern": CONTENT_PATTERN}),
    AfterValidator(_no_controls),
    AfterValidator(_not_blank),
]
Title = Annotated[str, Field(max_length=200, json_schema_extra={"pattern": TEXT_PATTERN}), AfterValidator(_no_controls)]
ClientMsgId = Annotated[str, Field(min_length=1, max_length=64, pattern=CLIENT_ID_PATTERN)]


def _integral(value: Any) -> Any:
    """JSON Schema counts 7.0 as an integer; strict validation would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


_SEQ = Annotated[int, Field(ge=0, le=INT64_MAX)]
Seq = Annotated[_SEQ, BeforeValidator(_integral, json_schema_input_type=_SEQ)]
# 1-32 code points, no whitespace and no control characters (SPEC §10)
Emoji = Annotated[str, StringConstraints(pattern=r"^[^\s\x00-\x1f\x7f]{1,32}$")]
SystemPrompt = Annotated[
    str, Field(max_length=4000, json_schema_extra={"pattern": TEXT_PATTERN}), AfterValidator(_no_controls)
]
UtcTime = Annotated[datetime, PlainSerializer(lambda d: d.isoformat(), return_type=str)]
# Echoed as `ref`: any string that can be sent back, or any integer.
FrameId = Annotated[str, AfterValidator(_encodable)] | int

# The ids a route takes in its path, validated (and documented) like the same ids in bodies.
PATH_IDS: dict[str, Any] = {
    "session_id": Identifier,
    "user_id": Identifier,
    "message_id": ObjectId,
    "record_id": ObjectId,
    "emoji": Emoji,
}


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# REST requests


class SendMessageIn(Body):
    session_id: Identifier
    content: Content
    client_msg_id: ClientMsgId | None = None


class CreateSessionIn(Body):
    session_id: Identifier | None = None
    title: Title | None = None
    members: Annotated[list[Identifier], Field(max_length=100)] = []
    ai_enabled: bool = True


AiTrigger = Literal["always", "mention"]


class SessionPatchIn(Body):
    """Only the fields given change; null system prompt or model means the server's default."""

    title: Title | None = None
    ai_enabled: bool = True
    ai_trigger: AiTrigger = "always"
    ai_system_prompt: SystemPrompt | None = None
    ai_model: Annotated[str, Field(min_length=1, max_length=100)] | None = None

    def given(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class AddMemberIn(Body):
    user_id: Identifier


class DevTokenIn(Body):
    user_id: Identifier


class EditIn(Body):
    content: Content
    client_msg_id: ClientMsgId | None = None


class ChangeQuery(Body):
    client_msg_id: ClientMsgId | None = None


class RegenerateIn(Body):
    message_id: ObjectId


# Pages stay within int64 offsets: (page - 1) × page_size ≤ INT64_MAX.
MAX_PAGE_SIZE = 100
MAX_PAGE = INT64_MAX // MAX_PAGE_SIZE
LIST_MODES = (
    "Two modes: pages (`page`, `page_size`) newest first, or a keyset page (`before_seq` newest first, or "
    "`after_seq` oldest first, with `limit`). `before_seq` and `after_seq` together, `page` or `page_size` "
    "with a seq bound, or `limit` without one: 422."
)


# The same rules for the OpenAPI document, which takes the query as one object (style form, exploded).
_KEYSET: dict[str, Any] = {"anyOf": [{"required": ["before_seq"]}, {"required": ["after_seq"]}]}
LIST_RULES: dict[str, Any] = {
    "not": {"required": ["before_seq", "after_seq"]},
    "if": _KEYSET,
    "then": {"not": {"anyOf": [{"required": ["page"]}, {"required": ["page_size"]}]}},
    "else": {"not": {"required": ["limit"]}},
}


class ListQuery(Body):
    model_config = ConfigDict(json_schema_extra={"description": LIST_MODES, **LIST_RULES})

    session_id: Identifier
    types: Literal["text", "all"] = "text"  # TEXT rows only, or every event (SPEC §10)
    page: Annotated[int, Field(ge=1, le=MAX_PAGE)] | None = None
    page_size: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] | None = None
    before_seq: Annotated[Seq, Field(description="not with after_seq")] | None = None
    after_seq: Annotated[Seq, Field(description="not with before_seq")] | None = None
    limit: Annotated[int, Field(ge=1, le=200, description="with before_seq or after_seq only")] | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> ListQuery:
        keyset = self.before_seq is not None or self.after_seq is not None
        if self.before_seq is not None and self.after_seq is not None:
            raise ValueError("give before_seq or after_seq, not both")
        if keyset and (self.page is not None or self.page_size is not None):
            raise ValueError("page and page_size do not combine with a seq bound")
        if not keyset and self.limit is not None:
            raise ValueError("limit goes with before_seq or after_seq")
        return self


class ReadIn(Body):
    seq: Seq


class ReadMarkerOut(BaseModel):
    session_id: str
    user_id: str
    last_read_seq: int


class RecordsQuery(Body):
    session_id: Identifier
    limit: Annotated[int, Field(ge=1, le=200)] = 50


# REST responses


class MessageOut(BaseModel):
    id: int
    message_id: str
    session_id: str
    seq: int
    from_user_id: str
    msg_type: str
    msg_content: str
    client_msg_id: str | None
    created_at: UtcTime
    target_message_id: str | None = None
    data: dict[str, Any] | None = None
    edited_at: UtcTime | None = None
    deleted: bool = False
    reactions: dict[str, list[str]] = {}


_STORED = ("id", "message_id", "session_id", "seq", "from_user_id", "msg_type", "msg_content", "client_msg_id")
# Every column a message object is built from (by message_out and message_wire).
MESSAGE_COLUMNS = (*_STORED, "created_at", "target_message_id", "data", "edited_at", "deleted_at", "reactions")


def message_out(message: object) -> MessageOut:
    """The message object of every answer and frame, from a stored row (an ORM object, a Core row, or
    anything with the columns as attributes), in its folded state (SPEC §10).

    Constructed without validation: the values come from the database's typed columns, and
    validating every row of a history page cost more than reading it."""
    values = {name: getattr(message, name) for name in _STORED}
    reactions = getattr(message, "reactions", None)
    return MessageOut.model_construct(
        **values,
        created_at=getattr(message, "created_at"),  # noqa: B009 - one way for all three kinds of row
        target_message_id=getattr(message, "target_message_id", None),
        data=getattr(message, "data", None),
        edited_at=getattr(message, "edited_at", None),
        deleted=getattr(message, "deleted_at", None) is not None,
        reactions=dict(reactions) if reactions and values["msg_type"] == "TEXT" else {},
    )


def message_wire(row: Mapping[str, Any]) -> dict[str, Any]:
    """`message_out(row)` as it goes on the wire, as plain values for JSON, from a row's columns by name:
    history pages are rendered from these, since a model per row cost more than reading the rows. The same
    bytes as MessageOut's JSON (tests/test_schemas.py holds the two together)."""
    edited_at, reactions = row["edited_at"], row["reactions"]
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "session_id": row["session_id"],
        "seq": row["seq"],
        "from_user_id": row["from_user_id"],
        "msg_type": row["msg_type"],
        "msg_content": row["msg_content"],
        "client_msg_id": row["client_msg_id"],
        "created_at": row["created_at"].isoformat(),
        "target_message_id": row["target_message_id"],
        "data": row["data"],
        "edited_at": edited_at.isoformat() if edited_at is not None else None,
        "deleted": row["deleted_at"] is not None,
        "reactions": reactions if reactions and row["msg_type"] == "TEXT" else {},
    }


class ChangeOut(MessageOut):
    """The answer to an edit, a delete or a reaction: the target as it is now, and the change's own row
    (null when nothing changed)."""

    event: MessageOut | None


class SentMessageOut(MessageOut):
    ai_record_id: str | None
    duplicate: bool


class MessagePage(BaseModel):
    """The answer of GET /message/list, as documented; rendered by `page_json`."""

    messages: list[MessageOut]
    total: int
    page: int | None
    page_size: int
    has_more: bool


def _json(value: Any) -> bytes:
    """JSON as a model's `model_dump_json` writes it (which writes NaN and infinities as null)."""
    return to_json(value, inf_nan_mode="null")


def page_json(messages: list[dict[str, Any]], total: int, page: int | None, page_size: int, has_more: bool) -> bytes:
    """MessagePage's JSON from the messages' `message_wire` values."""
    return _json({"messages": messages, "total": total, "page": page, "page_size": page_size, "has_more": has_more})


class SessionOut(BaseModel):
    session_id: str
    title: str | None
    created_by: str
    ai_enabled: bool
    ai_trigger: str
    ai_system_prompt: str | None
    ai_model: str | None
    last_seq: int
    created_at: UtcTime
    updated_at: UtcTime
    role: str | None
    last_read_seq: int
    unread: int
    last_message: MessageOut | None


class MemberInfo(BaseModel):
    user_id: str
    role: str
    joined_at: UtcTime
    last_read_seq: int
    online: bool


class SessionDetailOut(SessionOut):
    members: list[MemberInfo]


class RemovedOut(BaseModel):
    session_id: str
    user_id: str
    action: str


class SessionList(BaseModel):
    sessions: list[SessionOut]


class MemberOut(BaseModel):
    session_id: str
    user_id: str
    role: str
    joined_at: UtcTime


class RecordOut(BaseModel):
    record_id: str
    session_id: str
    user_message_id: str
    ai_message_id: str | None
    request_content: str
    response_content: str | None
    status: int
    duration_ms: int | None
    error_message: str | None
    model: str | None
    finish_reason: str | None
    first_token_ms: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    created_at: UtcTime
    updated_at: UtcTime


class RecordList(BaseModel):
    records: list[RecordOut]


class TokenOut(BaseModel):
    token: str


class HealthOut(BaseModel):
    status: str
    version: str
    ai_provider: str


class ReadyOut(BaseModel):
    status: str


class SnapshotEvent(BaseModel):
    """The data of the SSE `snapshot` event: the text so far."""

    record_id: str
    content: str


class DeltaEvent(BaseModel):
    """The data of an SSE `delta` event."""

    delta: str
    offset: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


# WebSocket frames, client to server


class ClientFrame(Body):
    id: FrameId | None = None


class SendMessageFrame(ClientFrame):
    type: Literal["send_message"]
    content: Content
    session_id: Identifier | None = None
    client_msg_id: ClientMsgId | None = None


class AiCancelFrame(ClientFrame):
    type: Literal["ai_cancel"]
    record_id: ObjectId


class SyncFrame(ClientFrame):
    type: Literal["sync"]
    session_id: Identifier
    after_seq: Seq


class PingFrame(ClientFrame):
    type: Literal["ping"]


class EditMessageFrame(ClientFrame):
    type: Literal["edit_message"]
    message_id: ObjectId
    content: Content
    client_msg_id: ClientMsgId | None = None


class DeleteMessageFrame(ClientFrame):
    type: Literal["delete_message"]
    message_id: ObjectId
    client_msg_id: ClientMsgId | None = None


class ReactFrame(ClientFrame):
    type: Literal["react"]
    message_id: ObjectId
    emoji: Emoji
    client_msg_id: ClientMsgId | None = None


class UnreactFrame(ClientFrame):
    type: Literal["unreact"]
    message_id: ObjectId
    emoji: Emoji
    client_msg_id: ClientMsgId | None = None


class ReadFrame(ClientFrame):
    type: Literal["read"]
    session_id: Identifier
    seq: Seq


class TypingFrame(ClientFrame):
    type: Literal["typing"]
    session_id: Identifier
    active: bool = True


Inbound = (
    SendMessageFrame
    | AiCancelFrame
    | SyncFrame
    | PingFrame
    | EditMessageFrame
    | DeleteMessageFrame
    | ReactFrame
    | UnreactFrame
    | ReadFrame
    | TypingFrame
)
InboundFrame = Annotated[Inbound, Field(discriminator="type")]
INBOUND_TYPES = frozenset(
    {
        "send_message",
        "ai_cancel",
        "sync",
        "ping",
        "edit_message",
        "delete_message",
        "react",
        "unreact",
        "read",
        "typing",
    }
)


# WebSocket frames, server to client


class ServerFrame(BaseModel):
    def wire(self) -> str:
        return self.model_dump_json()


class MessageSentFrame(ServerFrame):
    type: Literal["message_sent"] = "message_sent"
    ref: FrameId | None = None
    message_id: str
    content: str
    message: MessageOut
    client_msg_id: str | None
    duplicate: bool


class NewMessageFrame(ServerFrame):
    type: Literal["new_message"] = "new_message"
    message: MessageOut


class SyncResultFrame(ServerFrame):
    """The answer to `sync`, as documented; rendered by `sync_result_text`."""

    type: Literal["sync_result"] = "sync_result"
    ref: FrameId | None = None
    session_id: str
    messages: list[MessageOut]
    has_more: bool


def sync_result_text(ref: FrameId | None, session_id: str, messages: list[dict[str, Any]], has_more: bool) -> str:
    """SyncResultFrame's JSON from the messages' `message_wire` values."""
    frame = {"type": "sync_result", "ref": ref, "session_id": session_id, "messages": messages, "has_more": has_more}
    return _json(frame).decode()


class PongFrame(ServerFrame):
    type: Literal["pong"] = "pong"
    ref: FrameId | None = None


class ErrorFrame(ServerFrame):
    type: Literal["error"] = "error"
    code: str
    message: str
    ref: FrameId | None = None


class ReadMarkerFrame(ServerFrame):
    """A member's read marker moved (SPEC §12); `ref` only on the reader's own answer."""

    type: Literal["read_marker"] = "read_marker"
    ref: FrameId | None = None
    session_id: str
    user_id: str
    last_read_seq: int


class TypingNotice(ServerFrame):
    type: Literal["typing"] = "typing"
    session_id: str
    user_id: str
    active: bool


class PresenceFrame(ServerFrame):
    type: Literal["presence"] = "presence"
    user_id: str
    online: bool


class AiReplyStartFrame(ServerFrame):
    type: Literal["ai_reply_start"] = "ai_reply_start"
    record_id: str
    session_id: str
    user_message_id: str


class AiReplyDeltaFrame(ServerFrame):
    type: Literal["ai_reply_delta"] = "ai_reply_delta"
    record_id: str
    session_id: str
    delta: str
    offset: int


class AiReplySnapshotFrame(ServerFrame):
    type: Literal["ai_reply_snapshot"] = "ai_reply_snapshot"
    record_id: str
    session_id: str
    user_message_id: str
    content: str


class AiReplyFrame(ServerFrame):
    type: Literal["ai_reply"] = "ai_reply"
    message_id: str | None
    content: str
    user_message_id: str
    record_id: str
    session_id: str
    message: MessageOut | None
    finish_reason: str


class AiReplyErrorFrame(ServerFrame):
    type: Literal["ai_reply_error"] = "ai_reply_error"
    record_id: str
    session_id: str
    user_message_id: str
    error: ErrorDetail
    message: MessageOut | None


def sent_frame(message: MessageOut, ref: FrameId | None, duplicate: bool) -> MessageSentFrame:
    """The answer to the socket that caused a stored row."""
    return MessageSentFrame(
        ref=ref,
        message_id=message.message_id,
        content=message.msg_content,
        message=message,
        client_msg_id=message.client_msg_id,
        duplicate=duplicate,
    )


def final_reply_frame(
    record_id: str,
    session_id: str,
    user_message_id: str,
    content: str,
    message: MessageOut | None,
    finish_reason: str,
    error: ErrorDetail | None,
) -> AiReplyFrame | AiReplyErrorFrame:
    """How a reply ended, as members see it: `ai_reply`, or `ai_reply_error` when it failed."""
    if error is None:
        return AiReplyFrame(
            message_id=message.message_id if message else None,
            content=content,
            user_message_id=user_message_id,
            record_id=record_id,
            session_id=session_id,
            message=message,
            finish_reason=finish_reason,
        )
    return AiReplyErrorFrame(
        record_id=record_id, session_id=session_id, user_message_id=user_message_id, error=error, message=message
    )


def error_payload(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
