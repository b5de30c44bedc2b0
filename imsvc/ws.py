"""The WebSocket endpoint (SPEC §5): authenticate, then one loop reading frames while a sender task writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from imsvc.auth import bearer, verify_token
from imsvc.errors import (
    BadRequest,
    ImsvcError,
    Internal,
    InvalidJson,
    Unauthorized,
    UnknownType,
    ValidationFailed,
    translate,
)
from imsvc.hub import CLOSE_SHUTDOWN, Connection
from imsvc.logs import get_logger
from imsvc.schemas import (
    INBOUND_TYPES,
    AiCancelFrame,
    ErrorFrame,
    FrameId,
    Inbound,
    InboundFrame,
    PingFrame,
    PongFrame,
    SendMessageFrame,
    SyncFrame,
    SyncResultFrame,
    message_out,
)
from imsvc.services import Services, services

log = get_logger(__name__)

MAX_FRAME = 65536
CLOSE_UNAUTHORIZED = 4401
CLOSE_WRONG_USER = 4403
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013

inbound: TypeAdapter[Inbound] = TypeAdapter(InboundFrame)
frame_id: TypeAdapter[FrameId] = TypeAdapter(FrameId)


def frame_ref(data: Any) -> FrameId | None:
    """The frame's `id`, to echo as `ref`, when it can be echoed (a lone surrogate cannot be sent back)."""
    try:
        return frame_id.validate_python(data.get("id"), strict=True) if isinstance(data, dict) else None
    except ValidationError:
        return None


def too_big(raw: str | bytes) -> bool:
    if isinstance(raw, bytes):
        return len(raw) > MAX_FRAME
    # A text of at most MAX_FRAME / 4 code points cannot pass MAX_FRAME bytes: only longer ones are encoded.
    return len(raw) > MAX_FRAME // 4 and len(raw.encode()) > MAX_FRAME


def decode(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # UnicodeDecodeError and integers of over 4300 digits included
        raise InvalidJson("frame is not valid JSON") from None
    except RecursionError:
        raise BadRequest("frame is nested too deeply") from None


def parse(data: Any) -> Inbound:
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise BadRequest("a frame is a JSON object with a string `type`")
    if data["type"] not in INBOUND_TYPES:
        raise UnknownType(f"unknown frame type {data['type']!r}")
    try:
        return inbound.validate_python(data, strict=True)  # JSON has its types: `"5"` is not a seq, `1` not `true`
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        raise ValidationFailed(details) from None


async def endpoint(websocket: WebSocket) -> None:
    svc = services(websocket)
    await websocket.accept()
    token = bearer(websocket.headers.get("authorization")) or websocket.query_params.get("token")
    try:
        user_id = verify_token(svc.settings.secret, token, svc.settings.ai_bot_user_id)
    except Unauthorized as exc:
        await websocket.close(CLOSE_UNAUTHORIZED, exc.message)
        return
    path_user = websocket.path_params.get("user_id")
    if path_user is not None and path_user != user_id:
        await websocket.close(CLOSE_WRONG_USER, "path user is not the token's user")
        return
    conn = Connection(websocket, user_id, svc.settings.ws_send_queue)
    if svc.draining:
        await websocket.close(CLOSE_SHUTDOWN, "server shutting down")
        return
    if not svc.hub.register(conn):
        await websocket.close(CLOSE_TRY_AGAIN, "too many connections")
        return
    structlog.contextvars.bind_contextvars(user_id=user_id)
    sender = asyncio.create_task(conn.run_sender())
    try:
        await receive_loop(svc, websocket, conn, sender)
    finally:
        svc.hub.unregister(conn)
        conn.close(1000)  # flush what is buffered, then close (a no-op if it is closing already)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sender, timeout=1)  # cancels it past the timeout


async def receive_loop(svc: Services, websocket: WebSocket, conn: Connection, sender: asyncio.Task[None]) -> None:
    while not conn.closing:
        receiving = asyncio.ensure_future(websocket.receive())
        await asyncio.wait((receiving, sender), return_when=asyncio.FIRST_COMPLETED)
        if not receiving.done():  # the sender has ended (the socket is closed, or it gave up closing it)
            receiving.cancel()
            return
        message = receiving.result()
        if message["type"] == "websocket.disconnect":
            return
        raw: str | bytes = message.get("text") or message.get("bytes") or b""
        if too_big(raw):
            conn.close(CLOSE_TOO_BIG, "frame over 64 KiB")
            return
        await handle(svc, conn, raw)


async def handle(svc: Services, conn: Connection, raw: str | bytes) -> None:
    ref: FrameId | None = None
    try:
        data = decode(raw)
        ref = frame_ref(data)
        await dispatch(svc, conn, parse(data))
    except ImsvcError as exc:
        conn.send(ErrorFrame(code=exc.code, message=exc.message, ref=ref))
    except Exception as exc:
        error = translate(exc)
        if isinstance(error, Internal):
            log.exception("frame failed")
        else:
            log.warning("database unavailable", error=type(exc).__name__)
        conn.send(ErrorFrame(code=error.code, message=error.message, ref=ref))


async def dispatch(svc: Services, conn: Connection, frame: Inbound) -> None:
    match frame:
        case PingFrame():
            conn.send(PongFrame(ref=frame.id))
        case SendMessageFrame():
            session_id = frame.session_id or conn.user_id
            structlog.contextvars.bind_contextvars(session_id=session_id)
            await svc.chat.send(conn.user_id, session_id, frame.content, frame.client_msg_id, origin=conn, ref=frame.id)
        case SyncFrame():
            structlog.contextvars.bind_contextvars(session_id=frame.session_id)
            rows, has_more = await svc.chat.history_after(conn.user_id, frame.session_id, frame.after_seq)
            messages = [message_out(m) for m in rows]
            conn.send(SyncResultFrame(ref=frame.id, session_id=frame.session_id, messages=messages, has_more=has_more))
            # No await since the query: the snapshots and the deltas after them leave no gap.
            for reply in svc.replies.running(frame.session_id):
                conn.send(reply.snapshot())
        case AiCancelFrame():
            await svc.replies.cancel(conn.user_id, frame.record_id)


def routes() -> list[WebSocketRoute]:
    return [WebSocketRoute("/ws", endpoint), WebSocketRoute("/ws/{user_id}", endpoint)]
