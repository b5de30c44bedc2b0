"""Test clients: a live uvicorn server, REST as a given user, WebSocket clients that wait for frames."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from imsvc.app import GracefulServer, create_app
from imsvc.auth import mint_token
from imsvc.cli import uvicorn_options
from imsvc.settings import Settings

SECRET = "test-secret-0123456789abcdef0123456789"
WAIT = 10.0


def uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def token(user_id: str, secret: str = SECRET, ttl: int = 3600) -> str:
    return mint_token(secret, user_id, ttl)


def auth(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user_id)}"}


@dataclass
class LiveServer:
    url: str
    ws_url: str
    settings: Settings
    app: Starlette
    http: httpx.AsyncClient
    uvicorn: uvicorn.Server

    async def post(self, path: str, user: str | None, body: Any = None, **kw: Any) -> httpx.Response:
        headers = auth(user) if user else {}
        return await self.http.post(path, json=body, headers=headers, **kw)

    async def get(self, path: str, user: str | None, **kw: Any) -> httpx.Response:
        return await self.http.get(path, headers=auth(user) if user else {}, **kw)

    async def room(self, owner: str, *members: str, ai: bool = False) -> str:
        """A new session of `owner` and `members`; without the assistant unless `ai`."""
        session_id = uid("s")
        r = await self.post("/sessions", owner, {"session_id": session_id, "members": members, "ai_enabled": ai})
        assert r.status_code == 201, r.text
        return session_id

    async def send(self, user: str, session_id: str, content: str, **extra: Any) -> dict[str, Any]:
        r = await self.post("/message/send", user, {"session_id": session_id, "content": content, **extra})
        assert r.status_code in (200, 201), r.text
        body: dict[str, Any] = r.json()
        return body

    @asynccontextmanager
    async def ws(
        self, user: str, path: str = "/ws", tok: str | None = None, presence: bool = False
    ) -> AsyncIterator[WsClient]:
        uri = f"{self.ws_url}{path}?token={tok or token(user)}"
        async with connect(uri, max_size=None, open_timeout=WAIT) as conn:
            yield WsClient(conn, presence)


class WsClient:
    """A test's socket. Unless asked for them, it drops `presence` frames (others' sockets opening and
    closing), as a client that shows no presence would: tests of other frames expect them exactly."""

    def __init__(self, conn: ClientConnection, presence: bool = False) -> None:
        self.conn = conn
        self.presence = presence

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame: dict[str, Any] = json.loads(await self.conn.recv())
                if self.presence or frame["type"] != "presence":
                    return frame

    async def recv_type(self, kind: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next frame of type `kind`, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == kind:
                    return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame with an id and return the direct answer (the frame carrying that ref)."""
        ref = frame.setdefault("id", uuid.uuid4().hex[:8])
        await self.send(frame)
        async with asyncio.timeout(WAIT):
            while True:
                answer = await self.recv()
                if answer.get("ref") == ref:
                    return answer

    async def closed(self, timeout: float = WAIT) -> tuple[int | None, str]:
        """Wait for the server to close the socket; (code, reason)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.conn.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, "")
        raise AssertionError("unreachable")

    async def nothing_more(self) -> None:
        """Round-trip a ping frame: anything queued before the pong would show up first."""
        pong = await self.request({"type": "ping"})
        assert pong["type"] == "pong"


def free_socket() -> socket.socket:
    # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets of an explicit TCP protocol.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class StartedServer(GracefulServer):
    """The server imsvc runs, telling the test when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@asynccontextmanager
async def serve_app(app: Any, **options: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Serve an ASGI app with a real uvicorn on 127.0.0.1 at a port the OS picks."""
    sock = free_socket()
    config = uvicorn.Config(app, **{"lifespan": "on", **uvicorn_options(), **options})
    server = StartedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait([ready, task], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if not server.ready.is_set():
            ready.cancel()
            if task.done():
                task.result()  # raises what stopped the start-up
            raise RuntimeError("server did not start")
        host, port = sock.getsockname()
        yield f"{host}:{port}", server
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def start_server(
    database_url: str, server_options: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[LiveServer]:
    """imsvc with settings `overrides` (and uvicorn options, such as a short ping interval)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "jwt_secret": SECRET,
        "dev_mode": True,
        "migrate_on_start": False,
        "ai_provider": "echo",
        "ai_echo_delay_ms": 0,
        "log_level": "WARNING",
        "rate_limit_messages": 0,
    }
    values.update(overrides)
    settings = Settings(_env_file=None, **values)
    app = create_app(settings)
    async with (
        serve_app(app, **{"timeout_graceful_shutdown": 5, **(server_options or {})}) as (address, server),
        httpx.AsyncClient(base_url=f"http://{address}", timeout=WAIT) as http,
    ):
        yield LiveServer(f"http://{address}", f"ws://{address}", settings, app, http, server)


@dataclass
class ServerProcess:
    url: str
    ws_url: str
    proc: asyncio.subprocess.Process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve_process(database_url: str, *args: str, **env: str) -> AsyncIterator[ServerProcess]:
    """`imsvc serve` as its own process (as a service manager runs it), healthy when yielded, stopped after."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": SECRET,
        "MIGRATE_ON_START": "false",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imsvc",
        "serve",
        "--port",
        str(port),
        *args,
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", proc)
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(30):
            while True:
                assert proc.returncode is None, "the server exited"
                try:
                    if (await client.get(f"{server.url}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)  # polling the port until it listens
        yield server
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
