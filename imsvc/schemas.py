"""Pydantic shapes of what crosses the wire: REST bodies and responses, WebSocket frames."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, model_validator

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
Seq = Annotated[int, Field(ge=0, le=INT64_MAX)]
UtcTime = Annotated[datetime, PlainSerializer(lambda d: d.isoformat(), return_type=str)]
# Echoed as `ref`: any string that can be sent back, or any integer.
FrameId = Annotated[str, AfterValidator(_encodable)] | int

# The ids a route takes in its path, validated (and documented) like the same ids in bodies.
PATH_IDS: dict[str, Any] = {"session_id": Identifier, "message_id": ObjectId, "record_id": ObjectId}


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


class AddMemberIn(Body):
    user_id: Identifier


class DevTokenIn(Body):
    user_id: Identifier


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


def message_out(message: object) -> MessageOut:
    """The message object of every answer and frame, from a stored message."""
    return MessageOut.model_validate(message, from_attributes=True)


class SentMessageOut(MessageOut):
    ai_record_id: str | None
    duplicate: bool


class MessagePage(BaseModel):
    messages: list[MessageOut]
    total: int
    page: int | None
    page_size: int
    has_more: bool


class SessionOut(BaseModel):
    session_id: str
    title: str | None
    created_by: str
    ai_enabled: bool
    last_seq: int
    created_at: UtcTime
    updated_at: UtcTime
    role: str | None
    last_message: MessageOut | None


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


Inbound = SendMessageFrame | AiCancelFrame | SyncFrame | PingFrame
InboundFrame = Annotated[Inbound, Field(discriminator="type")]
INBOUND_TYPES = frozenset({"send_message", "ai_cancel", "sync", "ping"})


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
    type: Literal["sync_result"] = "sync_result"
    ref: FrameId | None = None
    session_id: str
    messages: list[MessageOut]
    has_more: bool


class PongFrame(ServerFrame):
    type: Literal["pong"] = "pong"
    ref: FrameId | None = None


class ErrorFrame(ServerFrame):
    type: Literal["error"] = "error"
    code: str
    message: str
    ref: FrameId | None = None


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


def error_payload(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
