"""Query functions, session (or, for history pages, connection) first. Nothing here commits: the caller owns
the transaction."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Row,
    ScalarSelect,
    Select,
    Table,
    bindparam,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from imsvc.changes import Kind
from imsvc.errors import Conflict, Forbidden, Interrupted, NotReady, connection_lost
from imsvc.models import AIChatRecord, ChatSession, Message, RecordStatus, SessionMember, utcnow
from imsvc.schemas import INT64_MAX, MESSAGE_COLUMNS, message_wire


def new_id(prefix: str) -> str:
    """`prefix_` + UTC time to the microsecond + 64 random bits: sortable and collision-free under load.

    The bits need not be secret (access goes by membership, not by knowing an id): the module's
    generator, reseeded in every forked worker, costs no system call per id."""
    return f"{prefix}_{datetime.now(UTC):%Y%m%d%H%M%S%f}{random.getrandbits(64):016x}"


# Sessions and members


async def member_role(s: AsyncSession, session_id: str, user_id: str) -> str | None:
    role: str | None = await s.scalar(
        select(SessionMember.role).where(SessionMember.session_id == session_id, SessionMember.user_id == user_id)
    )
    return role


async def require_member(s: AsyncSession, session_id: str, user_id: str) -> str:
    """The caller's role; Forbidden when not a member, whether or not the session exists."""
    role = await member_role(s, session_id, user_id)
    if role is None:
        raise Forbidden("not a member of this session")
    return role


async def get_session(s: AsyncSession, session_id: str) -> ChatSession | None:
    return await s.get(ChatSession, session_id)


async def _insert_ignoring_conflict(
    s: AsyncSession, table: type[ChatSession] | type[SessionMember], **values: object
) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True when the row was inserted."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    result = await s.execute(insert(table).values(**values).on_conflict_do_nothing())
    return bool(getattr(result, "rowcount", 0))


async def _new_session(s: AsyncSession, session_id: str, owner: str, title: str | None, ai_enabled: bool) -> bool:
    """Insert a session with its owner as member; False (and nothing inserted) when the id is taken."""
    now = utcnow()
    values = {"created_by": owner, "title": title, "ai_enabled": ai_enabled, "last_seq": 0}
    if not await _insert_ignoring_conflict(
        s, ChatSession, session_id=session_id, created_at=now, updated_at=now, **values
    ):
        return False
    s.add(SessionMember(session_id=session_id, user_id=owner, role="owner", joined_at=now))
    await s.flush()
    return True


async def create_session(
    s: AsyncSession, creator: str, session_id: str | None, title: str | None, members: list[str], ai_enabled: bool
) -> ChatSession:
    session_id = session_id or new_id("s")[:48]
    created = await _new_session(s, session_id, creator, title, ai_enabled)
    if not created:
        raise Conflict(f"session {session_id} already exists")
    now = utcnow()
    # Join order is the order listed, after the creator: a microsecond apart, so that joined_at tells it.
    for n, user_id in enumerate(u for u in dict.fromkeys(members) if u != creator):
        joined_at = now + timedelta(microseconds=n + 1)
        s.add(SessionMember(session_id=session_id, user_id=user_id, role="member", joined_at=joined_at))
    await s.flush()
    session = await get_session(s, session_id)
    assert session is not None
    return session


async def session_ids_of(s: AsyncSession, user_id: str) -> list[str]:
    """Every session the user is a member of (for the hub, when their socket opens)."""
    result = await s.scalars(select(SessionMember.session_id).where(SessionMember.user_id == user_id))
    return list(result)


@dataclass(frozen=True, slots=True)
class Listed:
    """A session as its member sees it: the caller's role and read marker, its last TEXT message, unread."""

    session: ChatSession
    role: str
    last_read_seq: int
    last_message: Message | None
    unread: int


def _listing(user_id: str) -> Select[ChatSession, str, int, int | None]:
    # The last TEXT message's seq as a column (one index lookup per session), and the messages in a
    # second query: as a join condition PostgreSQL evaluated the subquery once per message row.
    return (
        select(ChatSession, SessionMember.role, SessionMember.last_read_seq, _last_text_seq())
        .join(SessionMember, SessionMember.session_id == ChatSession.session_id)
        .where(SessionMember.user_id == user_id)
    )


async def _listed(s: AsyncSession, user_id: str, rows: Sequence[Any], session_id: str | None = None) -> list[Listed]:
    pairs = [(r[0].session_id, r[3]) for r in rows if r[3] is not None]
    last: dict[str, Message] = {}
    if pairs:
        found = await s.scalars(select(Message).where(tuple_(Message.session_id, Message.seq).in_(pairs)))
        last = {m.session_id: m for m in found}
    unread = await unread_counts(s, user_id, session_id)
    return [Listed(r[0], r[1], r[2], last.get(r[0].session_id), unread.get(r[0].session_id, 0)) for r in rows]


async def sessions_of(s: AsyncSession, user_id: str, limit: int = 200) -> list[Listed]:
    """The user's sessions, most recently active first."""
    query = _listing(user_id).order_by(ChatSession.updated_at.desc(), ChatSession.session_id).limit(limit)
    return await _listed(s, user_id, (await s.execute(query)).all())


async def session_of(s: AsyncSession, session_id: str, user_id: str) -> Listed:
    """One session, for a member; Forbidden otherwise (whether or not it exists)."""
    row = (await s.execute(_listing(user_id).where(ChatSession.session_id == session_id))).first()
    if row is None:
        raise Forbidden("not a member of this session")
    (listed,) = await _listed(s, user_id, [row], session_id)
    return listed


async def unread_counts(s: AsyncSession, user_id: str, session_id: str | None = None) -> dict[str, int]:
    """Per session of the user (or just `session_id`): others' TEXT messages after their read marker, deleted
    ones left out (SPEC §12). A count per membership, each an index range scan of the (session, seq) index
    from the marker: its cost is the unread rows, not the sessions' sizes (a grouped join scanned them all)."""
    m = aliased(Message)
    unread = (
        select(func.count())
        .where(
            m.session_id == SessionMember.session_id,
            m.seq > SessionMember.last_read_seq,
            m.msg_type == Kind.TEXT,
            m.from_user_id != user_id,
            m.deleted_at.is_(None),
        )
        .correlate(SessionMember)
        .scalar_subquery()
    )
    query = select(SessionMember.session_id, unread).where(SessionMember.user_id == user_id)
    if session_id is not None:
        query = query.where(SessionMember.session_id == session_id)
    return {sid: count for sid, count in (await s.execute(query)).all() if count}


async def members_of(s: AsyncSession, session_id: str) -> list[SessionMember]:
    """The session's members in join order."""
    result = await s.scalars(
        select(SessionMember)
        .where(SessionMember.session_id == session_id)
        .order_by(SessionMember.joined_at, SessionMember.user_id)
    )
    return list(result)


def _last_text_seq() -> ScalarSelect[Any]:
    """The seq of a session's latest TEXT message (its `last_message`, SPEC §10), by the type-and-seq index."""
    latest = aliased(Message)
    return (
        select(func.max(latest.seq))
        .where(latest.session_id == ChatSession.session_id, latest.msg_type == Kind.TEXT)
        .correlate(ChatSession)
        .scalar_subquery()
    )


# Messages


async def get_message(s: AsyncSession, message_id: str) -> Message | None:
    return await s.scalar(select(Message).where(Message.message_id == message_id))


@dataclass(frozen=True, slots=True)
class History:
    """A page of a session's messages, for a member: the session's last_seq, the messages (`message_wire`
    values), and whether more remain beyond them."""

    last_seq: int
    messages: list[dict[str, Any]]
    has_more: bool


# A seq bound above every seq: the newest messages are those before it.
NO_BOUND = INT64_MAX

_MESSAGES = cast(Table, Message.__table__)
_SESSIONS = cast(Table, ChatSession.__table__)
_MEMBERS = cast(Table, SessionMember.__table__)


@functools.cache
def _pg_history(newest_first: bool, text_only: bool, rows: int, skip: bool) -> str:
    """PostgreSQL's history statement: the membership check, the session's last_seq and up to `rows` messages
    in one round trip (not a member: no row; no message: one row of NULL message columns), past $4 rows when
    `skip`. `history` sends it to asyncpg itself, whose statement cache prepares it once per connection:
    through SQLAlchemy, executing statements and processing their rows cost several times the CPU that
    PostgreSQL spent answering them.

    The limit is written into the text (an int, never the client's string): with LIMIT $n, the generic plan
    that PostgreSQL would keep after five executions is costed for a tenth of the session, so it planned
    every execution afresh instead, which cost more than running the plan."""
    bound, order = ("<", "DESC") if newest_first else (">", "ASC")
    text = f" AND msg_type = '{Kind.TEXT}'" if text_only else ""
    return (
        "SELECT s.last_seq, m.* FROM sessions AS s"
        " JOIN session_members AS sm ON sm.session_id = s.session_id AND sm.user_id = $2"
        f" LEFT JOIN LATERAL (SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages"
        f" WHERE session_id = s.session_id AND seq {bound} $3{text}"
        f" ORDER BY seq {order} LIMIT {int(rows)}{' OFFSET $4' if skip else ''}) AS m ON true"
        " WHERE s.session_id = $1"
    )


async def _fetch(conn: AsyncConnection, sql: str, *args: object) -> list[Any]:
    """`sql`'s rows, from asyncpg itself. A connection found lost is handled as SQLAlchemy handles one that its
    own statement found: discarded, with every older one in the pool (replaced at their next checkout), and
    the caller is told not_ready. (One whose statement was cancelled can go back to the pool: asyncpg makes
    its next statement wait until PostgreSQL has acknowledged the cancellation.)"""
    pooled = await conn.get_raw_connection()
    driver = pooled.driver_connection
    assert driver is not None
    try:
        return cast(list[Any], await driver.fetch(sql, *args))
    except Exception as exc:
        if not (driver.is_closed() or connection_lost(exc)):
            raise  # the statement failed; its connection is sound
        conn.sync_engine.pool._invalidate(pooled, exc, _checkin=False)  # as Connection does on a disconnect
        await conn.invalidate(exc)
        raise NotReady("the database is not available") from exc


# SQLite: the same in two portable Core statements, built once.
_LAST_SEQ = (
    select(_SESSIONS.c.last_seq)
    .join(_MEMBERS, _MEMBERS.c.session_id == _SESSIONS.c.session_id)
    .where(_SESSIONS.c.session_id == bindparam("sid"), _MEMBERS.c.user_id == bindparam("uid"))
)


def _core_page(newest_first: bool, text_only: bool) -> Select[Any]:
    seq = _MESSAGES.c.seq
    query = select(*(_MESSAGES.c[name] for name in MESSAGE_COLUMNS)).where(
        _MESSAGES.c.session_id == bindparam("sid"), seq < bindparam("seq") if newest_first else seq > bindparam("seq")
    )
    if text_only:
        query = query.where(_MESSAGES.c.msg_type == Kind.TEXT)
    order = seq.desc() if newest_first else seq
    return query.order_by(order).limit(bindparam("lim")).offset(bindparam("off"))


_CORE_HISTORY = {(n, t): _core_page(n, t) for n in (True, False) for t in (True, False)}


async def history(
    conn: AsyncConnection,
    session_id: str,
    user_id: str,
    seq: int,
    newest_first: bool,
    limit: int,
    offset: int = 0,
    text_only: bool = False,
) -> History:
    """Up to `limit` messages past `offset` with seq below `seq` newest first, or above it oldest first, for a
    member; Forbidden otherwise, whether or not the session exists."""
    rows: Sequence[Any]
    if conn.dialect.name == "postgresql":
        sql = _pg_history(newest_first, text_only, limit + 1, offset > 0)
        rows = await _fetch(conn, sql, session_id, user_id, seq, *([offset] if offset else []))
        if not rows:
            raise Forbidden("not a member of this session")
        last_seq: int = rows[0]["last_seq"]
        if rows[0]["id"] is None:
            rows = []
    else:
        found: int | None = (await conn.execute(_LAST_SEQ, {"sid": session_id, "uid": user_id})).scalar()
        if found is None:
            raise Forbidden("not a member of this session")
        last_seq = found
        params = {"sid": session_id, "seq": seq, "lim": limit + 1, "off": offset}
        rows = (await conn.execute(_CORE_HISTORY[newest_first, text_only], params)).mappings().all()
    return History(last_seq, [message_wire(row) for row in rows[:limit]], len(rows) > limit)


# A reply's context is read in one statement, built once, through the session's Core connection: its
# messages and, in a column beside each, how many human members the session has. Two ORM queries took
# two round trips and most of the time between a send and the model's request.
_HUMANS = (
    select(func.count())
    .select_from(_MEMBERS)
    .where(_MEMBERS.c.session_id == bindparam("sid"), _MEMBERS.c.user_id != bindparam("bot"))
    .scalar_subquery()
)
_CONTEXT = (
    select(_MESSAGES.c.from_user_id, _MESSAGES.c.msg_content, _HUMANS.label("humans"))
    .where(
        _MESSAGES.c.session_id == bindparam("sid"),
        _MESSAGES.c.seq <= bindparam("seq"),
        _MESSAGES.c.msg_type == Kind.TEXT,
        _MESSAGES.c.deleted_at.is_(None),
    )
    .order_by(_MESSAGES.c.seq.desc())
    .limit(bindparam("lim"))
)


async def reply_context(
    s: AsyncSession, session_id: str, upto_seq: int, limit: int, bot_user_id: str
) -> tuple[list[Row[str, str, int]], int]:
    """The last `limit` TEXT messages up to and including seq `upto_seq`, oldest first, folded: edited text
    as edited, deleted messages left out (SPEC §10); each has `from_user_id` and `msg_content`. And the
    number of the session's members other than `bot_user_id` (0 when there is no message)."""
    params = {"sid": session_id, "seq": upto_seq, "lim": limit, "bot": bot_user_id}
    rows = list((await (await s.connection()).execute(_CONTEXT, params)).all())
    rows.reverse()
    humans: int = rows[0].humans if rows else 0
    return rows, humans


# AI chat records


async def create_record(
    s: AsyncSession, session_id: str, user_message_id: str, model: str, owner: str | None = None
) -> str:
    """A new record at status 0 (for a regenerate; a send's record is stored with its message); its id."""
    now, record_id = utcnow(), new_id("record")
    s.add(
        AIChatRecord(
            record_id=record_id,
            session_id=session_id,
            user_message_id=user_message_id,
            request_content="",
            status=int(RecordStatus.PROCESSING),
            model=model,
            owner=owner,
            created_at=now,
            updated_at=now,
        )
    )
    await s.flush()
    return record_id


async def get_record(s: AsyncSession, record_id: str) -> AIChatRecord | None:
    return await s.get(AIChatRecord, record_id)


async def records_of(s: AsyncSession, session_id: str, limit: int) -> list[AIChatRecord]:
    result = await s.scalars(
        select(AIChatRecord)
        .where(AIChatRecord.session_id == session_id)
        .order_by(AIChatRecord.created_at.desc(), AIChatRecord.record_id.desc())
        .limit(limit)
    )
    return list(result)


async def interrupt_unfinished(s: AsyncSession) -> int:
    """Records a crash left at status 0 become failed (`interrupted`); how many there were."""
    result = await s.execute(
        update(AIChatRecord)
        .where(AIChatRecord.status == int(RecordStatus.PROCESSING))
        .values(
            status=int(RecordStatus.FAILED),
            finish_reason=Interrupted.code,
            error_message=f"{Interrupted.code}: the server stopped during the reply",
            updated_at=utcnow(),
        )
    )
    return int(getattr(result, "rowcount", 0))
