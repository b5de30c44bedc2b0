"""create_app(settings): the lifespan builds every process-wide object; routes and error handlers are wired here."""

from __future__ import annotations

import contextlib
import gc
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
import uvicorn
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from imsvc import ai_api, api, sessions_api, ws
from imsvc.bus import MemoryBus, PostgresBus
from imsvc.chat import Chat
from imsvc.db import Database
from imsvc.errors import ImsvcError, Internal, RateLimited, translate
from imsvc.hub import Hub
from imsvc.llm import make_model
from imsvc.logs import configure_logging, get_logger
from imsvc.metrics import Metrics, RequestTimer
from imsvc.presence import LocalPresence, SharedPresence
from imsvc.replicas import Replicas
from imsvc.replies import ReplyScheduler
from imsvc.schemas import error_payload
from imsvc.sequencer import Sequencer
from imsvc.services import Services
from imsvc.settings import Settings

log = get_logger(__name__)

GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation (Python: 700)
STATIC = Path(__file__).resolve().parent / "static"
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "bad_request",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    503: "not_ready",
}


async def chat_page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html")


async def imsvc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ImsvcError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return JSONResponse(error_payload(exc.code, exc.message), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "internal")
    return JSONResponse(error_payload(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def database_error(request: Request, exc: Exception) -> Response:
    """The database's errors, answered here: past this handler, Starlette re-raises to uvicorn, which logs a
    traceback and drops the keep-alive connection, which is wrong for a database that is away for a while."""
    error = translate(exc)
    if isinstance(error, Internal):
        log.error("request failed", exc_info=exc)
    else:
        log.warning("database unavailable", error=type(exc).__name__)
    return JSONResponse(error_payload(error.code, error.message), status_code=error.status)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("request failed", exc_info=exc)
    error = translate(exc)
    return JSONResponse(error_payload(error.code, error.message), status_code=error.status)


class RequestContext:
    """Binds a request id (and, once known, the user) to every log line of the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        # 64 bits from the module's generator, as store.new_id does: uuid4 costs a system call per request.
        structlog.contextvars.bind_contextvars(request_id=f"{random.getrandbits(64):016x}")
        await self.app(scope, receive, send)


def create_app(settings: Settings) -> Starlette:
    configure_logging(settings.log_level, settings.log_format)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(settings.database_url)
        hub = Hub(settings.websocket_max_connections)
        process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        bus: MemoryBus | PostgresBus = (
            MemoryBus(hub) if settings.bus == "memory" else PostgresBus(settings.database_url, db, hub)
        )
        metrics.watch_sockets(lambda: hub.count)
        owner = process_id if isinstance(bus, PostgresBus) else None
        sequencer = Sequencer(db, bus, metrics, owner)
        replies = ReplyScheduler(settings, db, bus, sequencer, make_model(settings), metrics, hub, owner)
        chat = Chat(settings, db, bus, hub, sequencer, replies)
        replicas = None
        if isinstance(bus, PostgresBus):
            await bus.start()
            replicas = Replicas(settings, db, bus, replies, process_id)
            await replicas.start()  # its first heartbeat, then: only the dead's replies are ended
            with contextlib.suppress(Exception):
                await replicas.end_dead()
        else:
            await replies.interrupt_orphans()
        replies.take_cancels()
        sequencer.start()
        svc = Services(
            settings=settings,
            db=db,
            hub=hub,
            bus=bus,
            chat=chat,
            replies=replies,
            sequencer=sequencer,
            metrics=metrics,
            presence=SharedPresence(db, process_id) if isinstance(bus, PostgresBus) else LocalPresence(hub),
        )
        app.state.services = svc
        log.info("started", ai_provider=settings.provider, database=db.engine.dialect.name)
        if len(settings.secret.encode()) < 32:
            log.warning("JWT_SECRET is shorter than 32 bytes; HS256 wants at least 32")
        try:
            yield
        finally:
            await svc.drain()
            if replicas is not None:
                await replicas.close()
            if isinstance(bus, PostgresBus):
                await bus.close()
            await db.dispose()
            log.info("stopped")

    middleware = [Middleware(RequestContext), Middleware(RequestTimer, metrics=metrics)]
    if settings.cors_origin_list:
        middleware.append(
            Middleware(
                CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["*"], allow_headers=["*"]
            )
        )
    return Starlette(
        routes=[
            *api.routes(settings.dev_mode),
            *sessions_api.routes(),
            *ai_api.routes(),
            *ws.routes(),
            Route("/", chat_page),
            Mount("/static", StaticFiles(directory=STATIC)),
        ],
        middleware=middleware,
        exception_handlers={
            ImsvcError: imsvc_error,
            HTTPException: http_error,
            SQLAlchemyError: database_error,
            OSError: database_error,
            Exception: unexpected_error,
        },
        lifespan=lifespan,
    )


class GracefulServer(uvicorn.Server):
    """uvicorn closes every socket (1012) before the lifespan shutdown; draining first lets the members of
    a session watch its running replies end within SHUTDOWN_GRACE_S."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        svc = getattr(getattr(app, "state", None), "services", None)
        if isinstance(svc, Services):
            await svc.drain()
        await super().shutdown(sockets)


def from_environment() -> Starlette:
    """The app of one of `imsvc serve --workers N`'s processes, its settings read from the environment."""
    from imsvc.settings import load_settings

    app = create_app(load_settings())
    tune_gc()
    return app


def tune_gc() -> None:
    """For a serving process, once its app is built. Python's cyclic collector runs every 700 net
    allocations by default, and a busy server allocates that many every few frames: measured under
    200 senders it cost a third of the throughput and doubled p99. Everything built so far (modules,
    the app) is frozen out of the collections, and the youngest generation is collected ten times
    less often; cycles still go, a little later."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 50)
