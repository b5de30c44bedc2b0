"""A TCP proxy in front of PostgreSQL that a test can cut: the database becomes unreachable, then comes back.

async with db_proxy(database_url) as proxy:
    server = await make_server(database_url=proxy.url)
    proxy.cut()        # every proxied connection is dropped; new ones are refused
    proxy.restore()    # connections go through again
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url


@dataclass
class DbProxy:
    url: str = ""
    down: bool = False
    _links: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def cut(self) -> None:
        self.down = True
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.down = False

    async def _accept(
        self, host: str, port: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self.down:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.transport.abort()
            return
        self._links |= {client_writer, server_writer}
        pipes = [
            asyncio.create_task(_pipe(client_reader, server_writer)),
            asyncio.create_task(_pipe(server_reader, client_writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for writer in (client_writer, server_writer):
            writer.transport.abort()
            self._links.discard(writer)
        for task in pipes:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def db_proxy(database_url: str) -> AsyncIterator[DbProxy]:
    target = make_url(database_url)
    proxy = DbProxy()
    host, port = target.host or "127.0.0.1", target.port or 5432

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await proxy._accept(host, port, reader, writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    listen_port = server.sockets[0].getsockname()[1]
    proxy.url = target.set(host="127.0.0.1", port=listen_port).render_as_string(hide_password=False)
    try:
        yield proxy
    finally:
        proxy.cut()
        server.close()
        for task in list(proxy._tasks):
            task.cancel()
        await asyncio.gather(*proxy._tasks, return_exceptions=True)
        await server.wait_closed()
