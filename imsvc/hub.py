"""Who is connected: sockets per user, a bounded send buffer per socket, delivery of events to members."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from imsvc.logs import get_logger
from imsvc.schemas import AiReplyDeltaFrame, ServerFrame

log = get_logger(__name__)

CLOSE_SLOW_CONSUMER = 1008
CLOSE_SHUTDOWN = 1012


@dataclass(frozen=True)
class Event:
    """Something for every socket of `recipients`, except the socket `exclude` (answered directly)."""

    recipients: tuple[str, ...]
    text: str | None = None
    delta: AiReplyDeltaFrame | None = None
    exclude: str | None = None


class Connection:
    """One socket's outgoing side: a bounded buffer drained by `run_sender`.

    Consecutive waiting deltas of one reply are merged into a single frame instead of taking queue
    places, so a slow reader of a long reply gets fewer, larger deltas; only other frames can
    overflow the buffer.
    """

    def __init__(self, websocket: WebSocket, user_id: str, limit: int) -> None:
        self.id = uuid.uuid4().hex
        self.user_id = user_id
        self._websocket = websocket
        self._limit = limit
        self._items: deque[str | AiReplyDeltaFrame] = deque()
        self._counted = 0
        self._waiting_deltas: dict[str, AiReplyDeltaFrame] = {}
        self._wakeup = asyncio.Event()
        self._close_code: int | None = None
        self._close_reason = ""
        self._sender: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._close_code is not None

    def send(self, frame: ServerFrame | str) -> None:
        if self.closing:
            return
        if self._counted >= self._limit:
            log.warning("slow consumer dropped", user_id=self.user_id, queued=self._counted)
            self._items.clear()
            self._waiting_deltas.clear()
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
            if self._sender is not None:
                self._sender.cancel()  # it may be stuck writing to a peer that stopped reading
            return
        self._items.append(frame if isinstance(frame, str) else frame.wire())
        self._counted += 1
        # Later deltas must not merge into one queued before this frame (a snapshot, the final reply).
        self._waiting_deltas.clear()
        self._wakeup.set()

    def send_delta(self, frame: AiReplyDeltaFrame) -> None:
        if self.closing:
            return
        waiting = self._waiting_deltas.get(frame.record_id)
        if waiting is not None and waiting.offset + len(waiting.delta) == frame.offset:
            waiting.delta += frame.delta
            return
        copy = frame.model_copy()
        self._waiting_deltas[frame.record_id] = copy
        self._items.append(copy)
        self._wakeup.set()

    def close(self, code: int, reason: str = "") -> None:
        """Ask the sender to close the socket once what is buffered is sent (at once for a slow consumer)."""
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason
            self._wakeup.set()

    async def run_sender(self) -> None:
        self._sender = asyncio.current_task()
        try:
            await self._drain()
        except asyncio.CancelledError:
            if self._close_code != CLOSE_SLOW_CONSUMER:
                raise
            # Cancelled by send() on overflow: the frame being written is abandoned, the close goes out now.
            self._sender.uncancel()  # type: ignore[union-attr]
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self._close_socket()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._close_code = self._close_code or 1006  # the peer is gone: nothing more to send

    async def _close_socket(self) -> None:
        if self._websocket.application_state == WebSocketState.CONNECTED:
            assert self._close_code is not None
            await self._websocket.close(self._close_code, self._close_reason)

    async def _drain(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._items:
                item = self._items.popleft()
                if isinstance(item, AiReplyDeltaFrame):
                    if self._waiting_deltas.get(item.record_id) is item:
                        del self._waiting_deltas[item.record_id]
                    text = item.wire()
                else:
                    self._counted -= 1
                    text = item
                await self._websocket.send_text(text)
            if self._close_code is not None:
                await self._close_socket()
                return


class Hub:
    """The process's sockets, by user."""

    def __init__(self, max_connections: int) -> None:
        self._max = max_connections
        self._by_user: dict[str, set[Connection]] = {}

    @property
    def count(self) -> int:
        return sum(len(conns) for conns in self._by_user.values())

    def connections(self, user_id: str) -> frozenset[Connection]:
        return frozenset(self._by_user.get(user_id, ()))

    def register(self, conn: Connection) -> bool:
        if self.count >= self._max:
            return False
        self._by_user.setdefault(conn.user_id, set()).add(conn)
        return True

    def unregister(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user_id)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self._by_user[conn.user_id]

    def deliver(self, event: Event) -> None:
        for user_id in event.recipients:
            for conn in self._by_user.get(user_id, ()):
                if conn.id == event.exclude:
                    continue
                if event.delta is not None:
                    conn.send_delta(event.delta)
                elif event.text is not None:
                    conn.send(event.text)

    def close_all(self, code: int, reason: str) -> None:
        for conns in self._by_user.values():
            for conn in conns:
                conn.close(code, reason)
