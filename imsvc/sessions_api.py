"""HTTP routes of sessions (SPEC §4, §11, §12): create, list, read one with its members, change settings,
add and remove members."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imsvc import store
from imsvc.api import by_method, path_id, read_json, render, user_of
from imsvc.schemas import (
    AddMemberIn,
    CreateSessionIn,
    MemberInfo,
    MemberOut,
    ReadIn,
    ReadMarkerOut,
    RemovedOut,
    SessionDetailOut,
    SessionList,
    SessionOut,
    SessionPatchIn,
    message_out,
)
from imsvc.services import Services, services


def session_out(listed: store.Listed) -> SessionOut:
    session = listed.session
    return SessionOut(
        session_id=session.session_id,
        title=session.title,
        created_by=session.created_by,
        ai_enabled=session.ai_enabled,
        ai_trigger=session.ai_trigger,
        ai_system_prompt=session.ai_system_prompt,
        ai_model=session.ai_model,
        last_seq=session.last_seq,
        created_at=session.created_at,
        updated_at=session.updated_at,
        role=listed.role,
        last_read_seq=listed.last_read_seq,
        unread=listed.unread,
        last_message=message_out(listed.last_message) if listed.last_message is not None else None,
    )


async def detail(svc: Services, session_id: str, user_id: str) -> SessionDetailOut:
    async with svc.db.reader() as s:
        listed = await store.session_of(s, session_id, user_id)
        members = await store.members_of(s, session_id)
    online = await svc.presence.online(m.user_id for m in members)
    return SessionDetailOut(
        **session_out(listed).model_dump(),
        members=[
            MemberInfo(
                user_id=m.user_id,
                role=m.role,
                joined_at=m.joined_at,
                last_read_seq=m.last_read_seq,
                online=m.user_id in online,
            )
            for m in members
        ],
    )


async def create_session(request: Request) -> Response:
    user_id = user_of(request)
    body = await read_json(request, CreateSessionIn)
    svc = services(request)
    session = await svc.chat.create_session(user_id, body.session_id, body.title, body.members, body.ai_enabled)
    async with svc.db.reader() as s:
        listed = await store.session_of(s, session.session_id, user_id)
    return render(session_out(listed), 201)


async def list_sessions(request: Request) -> Response:
    user_id = user_of(request)
    async with services(request).db.reader() as s:
        listed = await store.sessions_of(s, user_id)
    return render(SessionList(sessions=[session_out(row) for row in listed]))


async def get_session(request: Request) -> Response:
    user_id = user_of(request)
    return render(await detail(services(request), path_id(request, "session_id"), user_id))


async def patch_session(request: Request) -> Response:
    user_id = user_of(request)
    body = await read_json(request, SessionPatchIn)
    session_id = path_id(request, "session_id")
    svc = services(request)
    await svc.chat.configure(user_id, session_id, body.given())
    async with svc.db.reader() as s:
        listed = await store.session_of(s, session_id, user_id)
    return render(session_out(listed))


async def add_member(request: Request) -> Response:
    user_id = user_of(request)
    body = await read_json(request, AddMemberIn)
    added = await services(request).chat.add_member(user_id, path_id(request, "session_id"), body.user_id)
    out = MemberOut(session_id=added.session_id, user_id=added.user_id, role=added.role, joined_at=added.joined_at)
    return render(out, 201 if added.created else 200)


async def remove_member(request: Request) -> Response:
    user_id = user_of(request)
    session_id = path_id(request, "session_id")
    target = path_id(request, "user_id")
    removed = await services(request).chat.remove_member(user_id, session_id, target)
    return render(RemovedOut(session_id=removed.session_id, user_id=removed.user_id, action=removed.action))


async def read(request: Request) -> Response:
    user_id = user_of(request)
    body = await read_json(request, ReadIn)
    marked = await services(request).chat.read(user_id, path_id(request, "session_id"), body.seq)
    return render(
        ReadMarkerOut(session_id=marked.session_id, user_id=marked.user_id, last_read_seq=marked.last_read_seq)
    )


def routes() -> list[Route]:
    return [
        Route("/sessions", by_method({"GET": list_sessions, "POST": create_session}), methods=["GET", "POST"]),
        Route(
            "/sessions/{session_id}",
            by_method({"GET": get_session, "PATCH": patch_session}),
            methods=["GET", "PATCH"],
        ),
        Route("/sessions/{session_id}/members", add_member, methods=["POST"]),
        Route("/sessions/{session_id}/members/{user_id}", remove_member, methods=["DELETE"]),
        Route("/sessions/{session_id}/read", read, methods=["POST"]),
    ]
