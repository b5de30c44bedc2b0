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
from imsvc.changes import Kind
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
from imsvc.events import Presence
from imsvc.hub import CLOSE_SHUTDOWN, Connection
from imsvc.logs import bound, get_logger
from imsvc.schemas import (
    INBOUND_TYPES,
    AiCancelFrame,
    DeleteMessageFrame,
    EditMessageFrame,
    ErrorFrame,
    FrameId,
    Inbound,
    InboundFrame,
    PingFrame,
    PongFrame,
    ReactFrame,
    ReadFrame,
    SendMessageFrame,
    SyncFrame,
    TypingFrame,
    UnreactFrame,
    sync_result_text,
)
from imsvc.services import Services, services
from imsvc.wsproto import Wire

log = get_logger(__name__)

MAX_FRAME = 65536
CLOSE_UNAUTHORIZED = 4401
CLOSE_WRONG_USER = 4403
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_INTERNAL = 1011

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
    token = bearer(websocket.headers.get("authorization")) or websocket.query_params.get("token")
    try:
        user_id = verify_token(svc.settings.secret, token, svc.settings.ai_bot_user_id)
    except Unauthorized as exc:
        await refuse(websocket, CLOSE_UNAUTHORIZED, exc.message)
        return
    path_user = websocket.path_params.get("user_id")
    if path_user is not None and path_user != user_id:
        await refuse(websocket, CLOSE_WRONG_USER, "path user is not the token's user")
        return
    if svc.draining:
        await refuse(websocket, CLOSE_SHUTDOWN, "server shutting down")
        return
    wire = Wire.of(websocket)
    if wire is None:
        log.error("served without imsvc's WebSocket protocol: serve it with `imsvc serve`")
        await refuse(websocket, CLOSE_INTERNAL, "server misconfigured")
        return
    conn = Connection(wire, user_id, svc.settings.ws_send_queue)
    first = not svc.hub.online(user_id)
    if not svc.hub.register(conn):
        await refuse(websocket, CLOSE_TRY_AGAIN, "too many connections")
        return
    # Subscribed before the handshake completes: once the client is connected, it misses nothing.
    loader = None if await subscribe(svc, conn) else asyncio.create_task(resubscribe(svc, conn))
    if first:
        await announce(svc, user_id, True, svc.hub.sessions(user_id))
    await websocket.accept()
    structlog.contextvars.bind_contextvars(user_id=user_id)
    sender = asyncio.create_task(conn.run_sender())
    try:
        await receive_loop(svc, websocket, conn)
    finally:
        sessions = svc.hub.unregister(conn)
        if sessions is not None:  # its user's last socket here
            await announce(svc, user_id, False, sessions)
        if loader is not None:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        conn.close(1000)  # flush what is buffered, then close (a no-op if it is closing already)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sender, timeout=1)  # cancels it past the timeout


async def announce(svc: Services, user_id: str, online: bool, sessions: tuple[str, ...]) -> None:
    """A user's first socket here opened, or their last one closed: tell those who share a session with
    them, when it changes their presence everywhere."""
    try:
        changed = await (svc.presence.opened(user_id) if online else svc.presence.closed(user_id))
    except Exception as exc:  # presence is not worth refusing a socket for
        log.warning("presence unknown", error=type(exc).__name__)
        return
    if changed:
        svc.bus.publish(Presence(user_id, online, sessions))


async def subscribe(svc: Services, conn: Connection) -> bool:
    """Tell the hub the sessions of the socket's user; False while the database cannot be reached."""
    try:
        sessions = await svc.chat.sessions_of(conn.user_id)
    except Exception as exc:
        if translate(exc).code != "not_ready":
            raise
        return False
    svc.hub.subscribe(conn, sessions)
    return True


async def resubscribe(svc: Services, conn: Connection) -> None:
    """Retry `subscribe` with backoff: the socket is served meanwhile (and nothing is stored while the
    database is down); a client that wants to be sure syncs once its first send succeeds."""
    delay = 0.2
    while not await subscribe(svc, conn):
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
    """Close codes reach the client only after the handshake: accept, then close with the reason."""
    await websocket.accept()
    await websocket.close(code, reason)


async def receive_loop(svc: Services, websocket: WebSocket, conn: Connection) -> None:
    """Frames until the socket closes: the sender's close (or its abort of a peer that took no close
    frame) ends the receiving side too."""
    while not conn.closing:
        message = await websocket.receive()
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
    session_id = getattr(frame, "session_id", None)
    chat, user = svc.chat, conn.user_id
    with bound(frame_type=frame.type, session_id=session_id):
        match frame:
            case PingFrame():
                conn.send(PongFrame(ref=frame.id))
            case SendMessageFrame():
                await svc.chat.send(
                    conn.user_id, session_id or conn.user_id, frame.content, frame.client_msg_id, conn, frame.id
                )
            case SyncFrame():
                found = await svc.chat.history_after(conn.user_id, frame.session_id, frame.after_seq)
                conn.send(sync_result_text(frame.id, frame.session_id, found.messages, found.has_more))
                # No await since the query: the snapshots and the deltas after them leave no gap.
                for snapshot in svc.replies.snapshots(frame.session_id):
                    conn.send(snapshot)
            case AiCancelFrame():
                await svc.replies.cancel(conn.user_id, frame.record_id)
            case EditMessageFrame():
                await chat.change(user, Kind.EDIT, frame.message_id, frame.content, frame.client_msg_id, conn, frame.id)
            case DeleteMessageFrame():
                await chat.change(user, Kind.DELETE, frame.message_id, "", frame.client_msg_id, conn, frame.id)
            case ReadFrame():
                await chat.read(user, frame.session_id, frame.seq, conn, frame.id)
            case TypingFrame():
                chat.typing(conn, frame.session_id, frame.active)
            case ReactFrame() | UnreactFrame():
                kind = Kind.REACT if isinstance(frame, ReactFrame) else Kind.UNREACT
                await chat.change(user, kind, frame.message_id, frame.emoji, frame.client_msg_id, conn, frame.id)


def routes() -> list[WebSocketRoute]:
    return [WebSocketRoute("/ws", endpoint), WebSocketRoute("/ws/{user_id}", endpoint)]
