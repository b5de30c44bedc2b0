"""The OpenAPI 3.1 document, generated from the pydantic models of the routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from imsvc import __version__
from imsvc.schemas import (
    AddMemberIn,
    ChangeOut,
    ChangeQuery,
    CreateSessionIn,
    DevTokenIn,
    EditIn,
    ErrorOut,
    HealthOut,
    ListQuery,
    MemberOut,
    MessageOut,
    MessagePage,
    ReadIn,
    ReadMarkerOut,
    ReadyOut,
    RecordList,
    RecordOut,
    RecordsQuery,
    RegenerateIn,
    RemovedOut,
    SendMessageIn,
    SentMessageOut,
    SessionDetailOut,
    SessionList,
    SessionOut,
    SessionPatchIn,
    TokenOut,
)

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    responses: dict[int, type[BaseModel] | str]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = (401,)
    public: bool = False
    path_params: tuple[str, ...] = field(default=())


OPERATIONS = [
    Operation(
        "post",
        "/message/send",
        "Send a message (idempotent with client_msg_id)",
        {201: SentMessageOut, 200: SentMessageOut},
        body=SendMessageIn,
        errors=(400, 401, 403, 413, 422, 429),
    ),
    Operation(
        "get",
        "/message/list",
        "History: pages newest first, or keyset pages by seq",
        {200: MessagePage},
        query=ListQuery,
        errors=(401, 403, 422),
    ),
    Operation(
        "get", "/message/{message_id}", "One message", {200: MessageOut}, errors=(401, 404), path_params=("message_id",)
    ),
    Operation(
        "patch",
        "/message/{message_id}",
        "Edit a message (its author; SPEC §10)",
        {200: ChangeOut},
        body=EditIn,
        errors=(400, 401, 403, 404, 409, 413, 422, 429),
        path_params=("message_id",),
    ),
    Operation(
        "delete",
        "/message/{message_id}",
        "Delete a message (its author, or the session's owner)",
        {200: ChangeOut},
        query=ChangeQuery,
        errors=(401, 403, 404, 422, 429),
        path_params=("message_id",),
    ),
    Operation(
        "put",
        "/message/{message_id}/reactions/{emoji}",
        "Add a reaction (any member)",
        {200: ChangeOut},
        query=ChangeQuery,
        errors=(401, 404, 409, 422, 429),
        path_params=("message_id", "emoji"),
    ),
    Operation(
        "delete",
        "/message/{message_id}/reactions/{emoji}",
        "Remove one's reaction",
        {200: ChangeOut},
        query=ChangeQuery,
        errors=(401, 404, 409, 422, 429),
        path_params=("message_id", "emoji"),
    ),
    Operation(
        "post",
        "/sessions",
        "Create a session",
        {201: SessionOut},
        body=CreateSessionIn,
        errors=(400, 401, 409, 413, 422),
    ),
    Operation("get", "/sessions", "The caller's sessions, most recently active first", {200: SessionList}),
    Operation(
        "post",
        "/sessions/{session_id}/members",
        "Add a member (any member may)",
        {201: MemberOut, 200: MemberOut},
        body=AddMemberIn,
        errors=(400, 401, 403, 413, 422),
        path_params=("session_id",),
    ),
    Operation(
        "get",
        "/sessions/{session_id}",
        "A session with its members (members only)",
        {200: SessionDetailOut},
        errors=(401, 403, 422),
        path_params=("session_id",),
    ),
    Operation(
        "patch",
        "/sessions/{session_id}",
        "Change the title and the assistant's settings (the owner)",
        {200: SessionOut},
        body=SessionPatchIn,
        errors=(400, 401, 403, 413, 422, 429),
        path_params=("session_id",),
    ),
    Operation(
        "delete",
        "/sessions/{session_id}/members/{user_id}",
        "Remove a member (the owner), or leave",
        {200: RemovedOut},
        errors=(401, 403, 404, 422, 429),
        path_params=("session_id", "user_id"),
    ),
    Operation(
        "post",
        "/sessions/{session_id}/read",
        "Move your read marker forward (clamped to last_seq)",
        {200: ReadMarkerOut},
        body=ReadIn,
        errors=(400, 401, 403, 413, 422),
        path_params=("session_id",),
    ),
    Operation(
        "get",
        "/ai/records",
        "AI chat records of a session, newest first",
        {200: RecordList},
        query=RecordsQuery,
        errors=(401, 403, 422),
    ),
    Operation(
        "get",
        "/ai/records/{record_id}",
        "One AI chat record",
        {200: RecordOut},
        errors=(401, 404),
        path_params=("record_id",),
    ),
    Operation(
        "post",
        "/ai/records/{record_id}/cancel",
        "Stop a running reply",
        {202: RecordOut},
        errors=(401, 404, 409),
        path_params=("record_id",),
    ),
    Operation(
        "post",
        "/ai/regenerate",
        "A new reply to a user message",
        {202: RecordOut},
        body=RegenerateIn,
        errors=(400, 401, 404, 413, 422, 429),
    ),
    Operation(
        "get",
        "/ai/records/{record_id}/stream",
        "Server-Sent Events: snapshot, deltas, then done or error",
        {200: "text/event-stream"},
        errors=(401, 404),
        path_params=("record_id",),
    ),
    Operation(
        "post",
        "/dev/token",
        "Dev mode only: a token for a user",
        {200: TokenOut},
        body=DevTokenIn,
        errors=(400, 404, 422),
        public=True,
    ),
    Operation("get", "/health", "Liveness", {200: HealthOut}, errors=(), public=True),
    Operation("get", "/ready", "Readiness", {200: ReadyOut, 503: ReadyOut}, errors=(), public=True),
    Operation("get", "/metrics", "Prometheus metrics", {200: "text/plain"}, errors=(), public=True),
    Operation("get", "/openapi.json", "This document", {200: "application/json"}, errors=(), public=True),
    Operation("get", "/", "The chat page", {200: "text/html"}, errors=(), public=True),
]


def _content(model: type[BaseModel] | str, refs: dict[Any, str]) -> dict[str, Any]:
    if isinstance(model, str):
        return {model: {"schema": {"type": "string"}}}
    return {"application/json": {"schema": {"$ref": refs[model]}}}


def _parameters(op: Operation, query_schemas: dict[type[BaseModel], dict[str, Any]]) -> list[dict[str, Any]]:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in op.path_params]
    if op.query is not None:
        schema = query_schemas[op.query]
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return params


def document() -> dict[str, Any]:
    models = {m for op in OPERATIONS for m in (op.body, *op.responses.values()) if isinstance(m, type)}
    models.add(ErrorOut)
    keys, schemas = models_json_schema(
        [(m, "validation" if m in {op.body for op in OPERATIONS} else "serialization") for m in models],
        ref_template=REF,
    )
    refs: dict[Any, str] = {model: ref["$ref"] for (model, _), ref in keys.items()}
    query_schemas = {op.query: op.query.model_json_schema() for op in OPERATIONS if op.query is not None}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {
            str(status): {"description": "success" if status < 400 else "not ready", "content": _content(model, refs)}
            for status, model in op.responses.items()
        }
        for status in op.errors:
            responses[str(status)] = {"description": "error", "content": _content(ErrorOut, refs)}
        operation: dict[str, Any] = {"summary": op.summary, "responses": responses}
        if params := _parameters(op, query_schemas):
            operation["parameters"] = params
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": _content(op.body, refs)}
        if op.public:
            operation["security"] = []
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imsvc",
            "version": __version__,
            "description": "Instant messaging with an AI assistant. WebSocket protocol: /ws (see the README).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }
