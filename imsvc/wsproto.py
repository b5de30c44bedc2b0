"""uvicorn's WebSocket protocol, with a cheaper permessage-deflate and frames written straight to the socket.

Deflate. With it on, most of an idle socket's memory was zlib's (a compressor with a 4 KiB window
and memLevel 5 per socket, uvicorn's choice). Chat frames are small JSON texts: a 1 KiB window,
memLevel 2 and the fastest level compress them almost as well, and the shortest are not worth it.
The server also takes no context from one frame to the next (`server_no_context_takeover`, which
RFC 7692 §7.1.1.1 lets a server impose): no compressor is kept per socket, and a frame compresses
to the same bytes for every socket that negotiated the same window, so fan-out compresses an event
once, not once per socket.

Writing. Every outgoing frame of an open socket is encoded here and handed to its transport
(`Wire.write`), not through ASGI's `send`: a frame rendered once (`Prepared`) costs each socket
one `transport.write`. The protocol offers itself to the app in the scope's extensions (`WIRE`).
uvicorn's own writes (the handshake, pings, pongs, the close) stay its own; the transport keeps
every write whole and in order.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

from starlette.websockets import WebSocket, WebSocketState
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

WIRE = "imsvc.wire"
WINDOW_BITS = 10
COMPRESSION = {"memLevel": 2, "level": 1}
# Shorter frames (acks, about 550 bytes; deltas, typing) go uncompressed, which permessage-deflate
# allows message by message: they would shrink by a few hundred bytes, for a compressor set up per frame.
COMPRESS_FROM = 1024
PLAIN = "plain"


class CompactDeflateProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            # Replaces the connection uvicorn just built (nothing has been received on it yet).
            self.conn = ServerProtocol(
                extensions=[
                    ServerPerMessageDeflateFactory(
                        server_no_context_takeover=True,
                        server_max_window_bits=WINDOW_BITS,
                        client_max_window_bits=WINDOW_BITS,
                        compress_settings=dict(COMPRESSION),
                    )
                ],
                max_size=self.config.ws_max_size,
                logger=logging.getLogger("uvicorn.error"),
            )

    async def run_asgi(self) -> None:
        self.scope["extensions"][WIRE] = {"protocol": self}
        await super().run_asgi()


class Prepared:
    """A text frame rendered once, and its bytes on the wire for each way of encoding them."""

    __slots__ = ("_encoded", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._encoded: dict[Hashable, bytes] = {}

    def encoded(self, conn: ServerProtocol, key: Hashable | None) -> bytes:
        """The frame for `conn`; `key` names its encoding when that is the same for every frame, else None."""
        extensions = conn.extensions
        if len(self.text) < COMPRESS_FROM:
            key, extensions = PLAIN, []
        if key is not None and (data := self._encoded.get(key)) is not None:
            return data
        data = Frame(Opcode.TEXT, self.text.encode()).serialize(mask=False, extensions=extensions)
        if key is not None:
            self._encoded[key] = data
        return data


def encoding_key(conn: ServerProtocol) -> Hashable | None:
    """What decides the bytes of a frame on this connection, when no extension keeps state between frames."""
    key: list[Hashable] = []
    for extension in conn.extensions:
        if not (isinstance(extension, PerMessageDeflate) and extension.local_no_context_takeover):
            return None
        key.append((extension.local_max_window_bits, tuple(sorted(extension.compress_settings.items()))))
    return tuple(key)


class Wire:
    """The outgoing side of one socket, written to directly."""

    def __init__(self, websocket: WebSocket, protocol: CompactDeflateProtocol) -> None:
        self._websocket = websocket
        self._protocol = protocol
        self._key = encoding_key(protocol.conn)

    @classmethod
    def of(cls, websocket: WebSocket) -> Wire | None:
        """The socket's wire, or None when the server is not running CompactDeflateProtocol."""
        offered = (websocket.scope.get("extensions") or {}).get(WIRE)
        return cls(websocket, offered["protocol"]) if offered else None

    @property
    def open(self) -> bool:
        """Whether data frames may go out: the handshake is done and no close has been sent or received."""
        p = self._protocol
        return p.handshake_complete and not p.close_sent and not p.disconnected and p.conn.state is State.OPEN

    @property
    def ready(self) -> bool:
        """Open, and the transport's buffer is below its high-water mark."""
        return self._protocol.writable.is_set() and self.open

    async def until_writable(self) -> None:
        await self._protocol.writable.wait()  # also set when the connection is lost

    def write(self, frame: Prepared) -> None:
        self._protocol.transport.write(frame.encoded(self._protocol.conn, self._key))

    async def close(self, code: int, reason: str) -> None:
        if self._websocket.application_state == WebSocketState.CONNECTED:
            await self._websocket.close(code, reason)

    def abort(self) -> None:
        """Drop the connection at once (a peer that did not even take a close frame); the app then
        receives `websocket.disconnect`."""
        self._protocol.transport.abort()
