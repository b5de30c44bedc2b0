"""uvicorn's WebSocket protocol with a cheaper permessage-deflate.

With deflate on, most of an idle socket's memory is zlib's: a compressor with a 4 KiB window and
memLevel 5 (uvicorn's choice) is about 32 KiB a socket before a frame is sent, which put 10,000
idle sockets above 64 KiB each. Chat frames are small JSON texts: a 1 KiB window, memLevel 2 and
the fastest level compress them almost as well, for a quarter of the memory and less CPU per
frame (the cost that fan-out pays once per socket). Clients that offer no deflate are unaffected.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.server import ServerProtocol

WINDOW_BITS = 10
COMPRESSION = {"memLevel": 2, "level": 1}


class CompactDeflateProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            # Replaces the connection uvicorn just built (nothing has been received on it yet).
            self.conn = ServerProtocol(
                extensions=[
                    ServerPerMessageDeflateFactory(
                        server_max_window_bits=WINDOW_BITS,
                        client_max_window_bits=WINDOW_BITS,
                        compress_settings=dict(COMPRESSION),
                    )
                ],
                max_size=self.config.ws_max_size,
                logger=logging.getLogger("uvicorn.error"),
            )
