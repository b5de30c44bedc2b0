"""HTTP routes of AI replies: records, cancel, regenerate, and the Server-Sent Events stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from imsvc import store
from imsvc.api import path_id, read_json, render, user_of, validate
from imsvc.errors import NotFound
from imsvc.events import stored_final_frame
from imsvc.models import AIChatRecord
from imsvc.schemas import (
    AiReplyDeltaFrame,
    AiReplyErrorFrame,
    AiReplyFrame,
    AiReplySnapshotFrame,
    DeltaEvent,
    MessageOut,
    RecordList,
    RecordOut,
    RecordsQuery,
    RegenerateIn,
    ServerFrame,
    SnapshotEvent,
    message_out,
)
from imsvc.services import Services, services


def record_out(record: AIChatRecord) -> RecordOut:
    return RecordOut.model_validate(record, from_attributes=True)


async def visible_record(svc: Services, user_id: str, record_id: str) -> AIChatRecord:
    """The record, or 404 when it does not exist or lies in a session the caller is not in."""
    async with svc.db.reader() as s:
        record = await store.get_record(s, record_id)
        if record is None or await store.member_role(s, record.session_id, user_id) is None:
            raise NotFound("no such AI record")
    return record


async def list_records(request: Request) -> Response:
    user_id = user_of(request)
    query = validate(RecordsQuery, dict(request.query_params))
    async with services(request).db.reader() as s:
        await store.require_member(s, query.session_id, user_id)
        records = await store.records_of(s, query.session_id, query.limit)
    return render(RecordList(records=[record_out(r) for r in records]))


async def get_record(request: Request) -> Response:
    record = await visible_record(services(request), user_of(request), path_id(request, "record_id"))
    return render(record_out(record))


async def cancel(request: Request) -> Response:
    svc, user_id, record_id = services(request), user_of(request), path_id(request, "record_id")
    await svc.replies.cancel(user_id, record_id)
    return render(record_out(await visible_record(svc, user_id, record_id)), 202)


async def regenerate(request: Request) -> Response:
    svc, user_id = services(request), user_of(request)
    body = await read_json(request, RegenerateIn)
    record_id = await svc.chat.regenerate(user_id, body.message_id)
    return render(record_out(await visible_record(svc, user_id, record_id)), 202)


def sse(event: str, data: BaseModel, exclude: set[str] | None = None) -> str:
    """One event; its data is documented in the OpenAPI document by the model's schema."""
    return f"event: {event}\ndata: {json.dumps(data.model_dump(mode='json', exclude=exclude), ensure_ascii=False)}\n\n"


def final_event(frame: ServerFrame) -> str:
    """`done` or `error`: the data is the final frame's, without its `type`."""
    return sse("error" if isinstance(frame, AiReplyErrorFrame) else "done", frame, exclude={"type"})


async def live_events(frames: AsyncIterator[ServerFrame]) -> AsyncIterator[str]:
    async for frame in frames:
        if isinstance(frame, AiReplySnapshotFrame):
            yield sse("snapshot", SnapshotEvent(record_id=frame.record_id, content=frame.content))
        elif isinstance(frame, AiReplyDeltaFrame):
            yield sse("delta", DeltaEvent(delta=frame.delta, offset=frame.offset))
        elif isinstance(frame, AiReplyFrame | AiReplyErrorFrame):
            yield final_event(frame)


async def stored_events(svc: Services, record: AIChatRecord) -> AsyncIterator[str]:
    message: MessageOut | None = None
    if record.ai_message_id is not None:
        async with svc.db.reader() as s:
            stored = await store.get_message(s, record.ai_message_id)
        message = message_out(stored) if stored else None
    yield sse("snapshot", SnapshotEvent(record_id=record.record_id, content=record.response_content or ""))
    yield final_event(stored_final_frame(record, message))


async def events(svc: Services, user_id: str, record_id: str) -> AsyncIterator[str]:
    """A running reply's events as they happen, or a finished one's as stored."""
    async with svc.replies.listen(record_id) as frames:
        if frames is not None:
            async for event in live_events(frames):
                yield event
            return
    async for event in stored_events(svc, await visible_record(svc, user_id, record_id)):
        yield event


async def stream(request: Request) -> Response:
    svc, user_id = services(request), user_of(request)
    record = await visible_record(svc, user_id, path_id(request, "record_id"))
    return StreamingResponse(
        events(svc, user_id, record.record_id), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def routes() -> list[Route]:
    return [
        Route("/ai/records", list_records, methods=["GET"]),
        Route("/ai/records/{record_id}", get_record, methods=["GET"]),
        Route("/ai/records/{record_id}/cancel", cancel, methods=["POST"]),
        Route("/ai/records/{record_id}/stream", stream, methods=["GET"]),
        Route("/ai/regenerate", regenerate, methods=["POST"]),
    ]
