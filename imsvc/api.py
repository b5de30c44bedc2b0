"""HTTP routes (SPEC §4). Handlers authenticate, parse, call the data path, and render typed responses."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imsvc import __version__, store
from imsvc.auth import bearer, mint_token, verify_token
from imsvc.changes import Kind
from imsvc.errors import BadRequest, InvalidJson, NotFound, PayloadTooLarge, ValidationFailed
from imsvc.openapi import document as openapi_document
from imsvc.schemas import (
    PATH_IDS,
    ChangeOut,
    ChangeQuery,
    DevTokenIn,
    EditIn,
    HealthOut,
    ListQuery,
    ReadyOut,
    SendMessageIn,
    SentMessageOut,
    TokenOut,
    message_out,
    page_json,
)
from imsvc.services import services

MAX_BODY = 65536
DEFAULT_KEYSET_LIMIT = 50
DEFAULT_PAGE_SIZE = 20

T = TypeVar("T", bound=BaseModel)
Endpoint = Callable[[Request], Awaitable[Response]]
PATH_ADAPTERS: dict[str, TypeAdapter[str]] = {name: TypeAdapter(kind) for name, kind in PATH_IDS.items()}


def render(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


def validate(model: type[T], data: Any, strict: bool = False) -> T:
    """`data` as `model`, or 422. Strict for JSON bodies (`true` is a boolean, `"yes"` and `0` are not); query
    strings arrive as text, so their integers are read from it."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise ValidationFailed(validation_message(exc)) from None


def path_id(request: Request, name: str) -> str:
    """An id from the path, validated like the same id in a body (a `%00` in it is 422, not a database error)."""
    try:
        return PATH_ADAPTERS[name].validate_python(request.path_params[name])
    except ValidationError as exc:
        raise ValidationFailed(f"{name}: {validation_message(exc)}") from None


def user_of(request: Request) -> str:
    settings = services(request).settings
    user_id = verify_token(settings.secret, bearer(request.headers.get("authorization")), settings.ai_bot_user_id)
    structlog.contextvars.bind_contextvars(user_id=user_id)
    return user_id


async def read_json(request: Request, model: type[T]) -> T:
    """The body parsed into `model`: 413 over 64 KiB, 400 when it is not JSON, 422 when it does not fit."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise PayloadTooLarge(f"body over {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"body over {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except ValueError:  # integers of over 4300 digits included
        raise InvalidJson("body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    return validate(model, data, strict=True)


async def send_message(request: Request) -> Response:
    user_id = user_of(request)
    body = await read_json(request, SendMessageIn)
    sent = await services(request).chat.send(user_id, body.session_id, body.content, body.client_msg_id)
    out = SentMessageOut(**sent.message.model_dump(), ai_record_id=sent.record_id, duplicate=sent.duplicate)
    return render(out, 200 if sent.duplicate else 201)


async def get_message(request: Request) -> Response:
    user_id = user_of(request)
    async with services(request).db.reader() as s:
        message = await store.get_message(s, path_id(request, "message_id"))
        if message is None or await store.member_role(s, message.session_id, user_id) is None:
            raise NotFound("no such message")
    return render(message_out(message))


async def list_messages(request: Request) -> Response:
    user_id = user_of(request)
    query = validate(ListQuery, dict(request.query_params))
    page: int | None = None
    if query.after_seq is not None:
        seq, newest_first, limit, offset = query.after_seq, False, query.limit or DEFAULT_KEYSET_LIMIT, 0
    elif query.before_seq is not None:
        seq, newest_first, limit, offset = query.before_seq, True, query.limit or DEFAULT_KEYSET_LIMIT, 0
    else:
        page, limit = query.page or 1, query.page_size or DEFAULT_PAGE_SIZE
        seq, newest_first, offset = store.NO_BOUND, True, (page - 1) * limit
    async with services(request).db.read_connection() as conn:
        found = await store.history(
            conn, query.session_id, user_id, seq, newest_first, limit, offset, query.types == "text"
        )
    body = page_json(found.messages, found.last_seq, page, limit, found.has_more)
    return Response(body, media_type="application/json")


async def change(request: Request, kind: Kind, value: str = "", client_msg_id: str | None = None) -> Response:
    user_id = user_of(request)
    message_id = path_id(request, "message_id")
    changed = await services(request).chat.change(user_id, kind, message_id, value, client_msg_id)
    return render(ChangeOut(**changed.target.model_dump(), event=changed.event))


async def edit_message(request: Request) -> Response:
    user_of(request)
    body = await read_json(request, EditIn)
    return await change(request, Kind.EDIT, body.content, body.client_msg_id)


async def delete_message(request: Request) -> Response:
    user_of(request)
    query = validate(ChangeQuery, dict(request.query_params))
    return await change(request, Kind.DELETE, client_msg_id=query.client_msg_id)


async def react(request: Request) -> Response:
    user_of(request)
    query = validate(ChangeQuery, dict(request.query_params))
    emoji = path_id(request, "emoji")
    kind = Kind.REACT if request.method == "PUT" else Kind.UNREACT
    return await change(request, kind, emoji, query.client_msg_id)


async def dev_token(request: Request) -> Response:
    body = await read_json(request, DevTokenIn)
    if body.user_id == services(request).settings.ai_bot_user_id:
        raise ValidationFailed("the assistant's user id cannot sign in")
    return render(TokenOut(token=mint_token(services(request).settings.secret, body.user_id)))


async def health(request: Request) -> Response:
    return render(HealthOut(status="ok", version=__version__, ai_provider=services(request).settings.provider))


async def ready(request: Request) -> Response:
    svc = services(request)
    if svc.draining:
        return render(ReadyOut(status="draining"), 503)
    try:
        await svc.db.ping()
    except Exception:
        return render(ReadyOut(status="db_unavailable"), 503)
    return render(ReadyOut(status="ready"))


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    """One endpoint for the methods of one path: as one Route, a 405 there names them all in `Allow`."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return endpoint


def routes(dev_mode: bool) -> list[Route]:
    found = [
        Route("/message/send", send_message, methods=["POST"]),
        Route("/message/list", list_messages, methods=["GET"]),  # before /message/{message_id}
        Route(
            "/message/{message_id}",
            by_method({"GET": get_message, "PATCH": edit_message, "DELETE": delete_message}),
            methods=["GET", "PATCH", "DELETE"],
        ),
        Route("/message/{message_id}/reactions/{emoji}", react, methods=["PUT", "DELETE"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    if dev_mode:
        found.append(Route("/dev/token", dev_token, methods=["POST"]))
    return found
