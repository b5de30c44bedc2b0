"""Just enough of a WebSocket client for the bench's fan-out receivers: read text frames, nothing else.

A full client library (websockets) costs the load process several times the server's own work per
frame, and on a small machine the load's CPU is the server's CPU too: a fan-out of 1,000 sockets
would measure the clients. This one parses the server's unmasked frames straight from the
transport's buffer. It offers permessage-deflate as browsers do, and inflates what the server
compresses (each message alone when the server takes no context between messages, as imsvc does).
"""

from __future__ import annotations

import asyncio
import base64
import os
import zlib
from collections.abc import Callable
from typing import cast

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
TAIL = b"\x00\x00\xff\xff"  # what permessage-deflate strips from every message


class HandshakeError(Exception):
    """The server did not switch protocols."""


class RawSocket(asyncio.Protocol):
    def __init__(self, host: str, path: str, on_text: Callable[[bytes], None]) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
        self._on_text = on_text
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._upgraded = False
        self._inflate: Callable[[bytes], bytes] | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded and not self._handshake():
            return
        self._frames()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = self._buffer[:end].decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        if " 101 " not in head[0] + " ":
            self.opened.set_exception(HandshakeError(head[0]))
            return False
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                self._inflate = _inflater(value)
        self._upgraded = True
        self.opened.set_result(None)
        return True

    def _frames(self) -> None:
        buffer, pos, size = self._buffer, 0, len(self._buffer)
        while size - pos >= 2:
            first, length = buffer[pos], buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4]), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10]), 10
            if size - pos < head + length:
                break
            payload = bytes(buffer[pos + head : pos + head + length])
            pos += head + length
            self._frame(first, payload)
        del buffer[:pos]

    def _frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode == OP_TEXT:
            compressed = first & 0x40
            self._on_text(self._inflate(payload) if compressed and self._inflate else payload)
        elif opcode == OP_PING and self._transport is not None:
            self._transport.write(_masked(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if not self.closed.done():
                self.closed.set_result(None)
            self.close()


def _inflater(offer: str) -> Callable[[bytes], bytes]:
    params = {p.strip().partition("=")[0]: p.strip().partition("=")[2] for p in offer.split(";")[1:]}
    bits = int(params.get("server_max_window_bits") or 15)
    if "server_no_context_takeover" in params:
        return lambda data: zlib.decompressobj(-bits).decompress(data + TAIL)
    shared = zlib.decompressobj(-bits)
    return lambda data: shared.decompress(data + TAIL)


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients mask what they send); control payloads are under 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def open_socket(host: str, port: int, path: str, on_text: Callable[[bytes], None]) -> RawSocket:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: RawSocket(f"{host}:{port}", path, on_text), host, port)
    await protocol.opened
    return protocol
