"""The OpenAPI 3.1 document, generated from the pydantic models of the routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from imsvc import __version__
from imsvc.schemas import (
    LIST_MODES,
    PATH_IDS,
    AddMemberIn,
    AiReplyErrorFrame,
    AiReplyFrame,
    ChangeOut,
    ChangeQuery,
    CreateSessionIn,
    DeltaEvent,
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
    SnapshotEvent,
    TokenOut,
)

REF = "#/components/schemas/{model}"
SSE = "text/event-stream"
# The data of SSE `done` and `error`, as components: the final frames without their `type`.
SSE_FINAL = {"done": ("ReplyDoneEvent", AiReplyFrame), "error": ("ReplyErrorEvent", AiReplyErrorFrame)}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    responses: dict[int, type[BaseModel] | str]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = (401, 503)
    public: bool = False
    path_params: tuple[str, ...] = field(default=())
    description: str | None = None
    query_object: bool = False


OPERATIONS = [
    Operation(
        "post",
        "/message/send",
        "Send a message (idempotent with client_msg_id)",
        {201: SentMessageOut, 200: SentMessageOut},
        body=SendMessageIn,
        errors=(400, 401, 403, 413, 422, 429, 503),
    ),
    Operation(
        "get",
        "/message/list",
        "History: pages newest first, or keyset pages by seq",
        {200: MessagePage},
        query=ListQuery,
        errors=(401, 403, 422, 503),
        description=LIST_MODES,
        query_object=True,
    ),
    Operation(
        "get",
        "/message/{message_id}",
        "One message",
        {200: MessageOut},
        errors=(401, 404, 422, 503),
        path_params=("message_id",),
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
        errors=(401, 403, 404, 409, 422, 429),
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
        errors=(400, 401, 409, 413, 422, 503),
    ),
    Operation("get", "/sessions", "The caller's sessions, most recently active first", {200: SessionList}),
    Operation(
        "post",
        "/sessions/{session_id}/members",
        "Add a member (any member may)",
        {201: MemberOut, 200: MemberOut},
        body=AddMemberIn,
        errors=(400, 401, 403, 413, 422, 503),
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
        errors=(401, 403, 422, 503),
    ),
    Operation(
        "get",
        "/ai/records/{record_id}",
        "One AI chat record",
        {200: RecordOut},
        errors=(401, 404, 422, 503),
        path_params=("record_id",),
    ),
    Operation(
        "post",
        "/ai/records/{record_id}/cancel",
        "Stop a running reply",
        {202: RecordOut},
        errors=(401, 404, 409, 422, 503),
        path_params=("record_id",),
    ),
    Operation(
        "post",
        "/ai/regenerate",
        "A new reply to a user message",
        {202: RecordOut},
        body=RegenerateIn,
        errors=(400, 401, 404, 413, 422, 429, 503),
        description="422 for an AI reply's message and in a session without the assistant.",
    ),
    Operation(
        "get",
        "/ai/records/{record_id}/stream",
        "Server-Sent Events: snapshot, deltas, then done or error",
        {200: SSE},
        errors=(401, 404, 422, 503),
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


def _sse_schema(refs: dict[Any, str]) -> dict[str, Any]:
    """One event of the stream (OpenAPI 3.1: the schema of an event-stream describes each event)."""

    def event(name: str, ref: str) -> dict[str, Any]:
        data = {"type": "string", "contentMediaType": "application/json", "contentSchema": {"$ref": ref}}
        return {"type": "object", "required": ["event", "data"], "properties": {"event": {"const": name}, "data": data}}

    finals = [event(name, REF.format(model=component)) for name, (component, _) in SSE_FINAL.items()]
    return {"oneOf": [event("snapshot", refs[SnapshotEvent]), event("delta", refs[DeltaEvent]), *finals]}


def _content(model: type[BaseModel] | str, refs: dict[Any, str]) -> dict[str, Any]:
    if model == SSE:
        return {SSE: {"schema": _sse_schema(refs)}}
    if isinstance(model, str):
        return {model: {"schema": {"type": "string"}}}
    return {"application/json": {"schema": {"$ref": refs[model]}}}


def _parameters(op: Operation, query_schemas: dict[type[BaseModel], dict[str, Any]]) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": TypeAdapter(PATH_IDS[name]).json_schema()}
        for name in op.path_params
    ]
    if op.query is not None and op.query_object:
        schema = query_schemas[op.query]
        properties = {name: _query_value(prop) for name, prop in schema["properties"].items()}
        params.append(
            {
                "name": "query",
                "in": "query",
                "style": "form",
                "explode": True,
                "required": True,
                "schema": {**schema, "properties": properties},
            }
        )
    elif op.query is not None:
        schema = query_schemas[op.query]
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            param = {"name": name, "in": "query", "required": name in required, "schema": _query_value(prop)}
            if "description" in param["schema"]:
                param["description"] = param["schema"].pop("description")
            params.append(param)
    return params


def _query_value(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema as a query parameter's: a parameter is left out, never null."""
    branches = [b for b in prop.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) != 1:
        return prop
    rest = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**rest, **branches[0]}


def _final_events(schemas: dict[str, Any], refs: dict[Any, str]) -> dict[str, Any]:
    """The components of SSE `done` and `error`: the final frames' schemas without `type`."""
    found = {}
    for component, frame in SSE_FINAL.values():
        schema = dict(schemas.pop(refs[frame].removeprefix(REF.format(model=""))))
        schema["properties"] = {k: v for k, v in schema["properties"].items() if k != "type"}
        schema["required"] = [k for k in schema.get("required", []) if k != "type"]
        schema["title"] = component
        found[component] = schema
    return found


def document() -> dict[str, Any]:
    models = {m for op in OPERATIONS for m in (op.body, *op.responses.values()) if isinstance(m, type)}
    models |= {ErrorOut, SnapshotEvent, DeltaEvent, AiReplyFrame, AiReplyErrorFrame}
    bodies = {op.body for op in OPERATIONS}
    keys, schemas = models_json_schema(
        [(m, "validation" if m in bodies else "serialization") for m in models], ref_template=REF
    )
    refs: dict[Any, str] = {model: ref["$ref"] for (model, _), ref in keys.items()}
    components = schemas.get("$defs", {})
    components.update(_final_events(components, refs))
    query_schemas = {op.query: op.query.model_json_schema() for op in OPERATIONS if op.query is not None}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {
            str(status): {"description": HTTPStatus(status).phrase, "content": _content(model, refs)}
            for status, model in op.responses.items()
        }
        for status in op.errors:
            responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": _content(ErrorOut, refs)}
        operation: dict[str, Any] = {"summary": op.summary, "responses": responses}
        if op.description:
            operation["description"] = op.description
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
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }
