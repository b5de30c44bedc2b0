"""The statements of a group commit: many events of many sessions stored in one transaction.

Set-based on purpose, one statement per step for the whole batch: at a few thousand messages a
second, one transaction per message costs more round trips and Python than the rows themselves.
Nothing here commits: the sequencer owns the transaction.

On PostgreSQL the four statements of every batch (lock, memberships, insert, advance) are written
as SQL over arrays (`= ANY`, `unnest`): their text is the same whatever the batch size, so asyncpg
prepares each once. SQLAlchemy's expanding IN lists and multi-row VALUES would be a new statement
for every batch size, prepared again each time (measured: a third of the writer's time). SQLite,
the embedded default, takes the same steps in portable Core.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from imsvc.changes import Target
from imsvc.models import AIChatRecord, ChatSession, Message, RecordStatus, SessionMember
from imsvc.schemas import MessageOut, message_out

sessions = cast(Table, ChatSession.__table__)
members = cast(Table, SessionMember.__table__)
messages = cast(Table, Message.__table__)
records = cast(Table, AIChatRecord.__table__)

ClientKey = tuple[str, str, str]  # session, author, client_msg_id


@dataclass(slots=True)
class SessionState:
    """A locked session's row, as the batch sees it (settings changed earlier in the batch included)."""

    last_seq: int
    title: str | None
    ai_enabled: bool
    ai_trigger: str
    ai_system_prompt: str | None
    ai_model: str | None


@dataclass(frozen=True, slots=True)
class Membership:
    role: str
    joined_at: datetime
    last_read_seq: int = 0


@dataclass(frozen=True, slots=True)
class Original:
    """A message stored earlier under a client_msg_id, and the reply record it started (if any)."""

    message: MessageOut
    record_id: str | None
    record_status: RecordStatus | None


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """How a reply ended, as its record stores it (SPEC §6, §9)."""

    status: RecordStatus
    finish_reason: str
    request_content: str
    response_content: str | None
    duration_ms: int
    first_token_ms: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error_message: str | None


async def originals(c: AsyncConnection, keys: Iterable[ClientKey]) -> dict[ClientKey, Original]:
    wanted = list(keys)
    if not wanted:
        return {}
    rows = (
        await c.execute(
            select(messages).where(
                tuple_(messages.c.session_id, messages.c.from_user_id, messages.c.client_msg_id).in_(wanted)
            )
        )
    ).all()
    found = {(r.session_id, r.from_user_id, r.client_msg_id): message_out(r) for r in rows}
    replies = await first_records(c, [m.message_id for m in found.values()])
    return {key: Original(message, *replies.get(message.message_id, (None, None))) for key, message in found.items()}


async def first_records(c: AsyncConnection, message_ids: list[str]) -> dict[str, tuple[str, RecordStatus]]:
    """The first reply record of each message: the one its send started."""
    if not message_ids:
        return {}
    rows = await c.execute(
        select(records.c.user_message_id, records.c.record_id, records.c.status)
        .where(records.c.user_message_id.in_(message_ids))
        .order_by(records.c.created_at.desc())
    )
    return {r.user_message_id: (r.record_id, RecordStatus(r.status)) for r in rows}  # the oldest wins


async def lock_sessions(c: AsyncConnection, session_ids: Iterable[str]) -> dict[str, SessionState]:
    """Lock the sessions' rows (in id order, so that concurrent writers cannot deadlock) and read their state."""
    if _postgres(c):
        rows = await c.execute(_PG_LOCK, {"ids": sorted(set(session_ids))})
    else:
        rows = await c.execute(
            select(*(sessions.c[name] for name in _SESSION_STATE))
            .where(sessions.c.session_id.in_(sorted(set(session_ids))))
            .order_by(sessions.c.session_id)
            .with_for_update()
        )
    return {
        r.session_id: SessionState(r.last_seq, r.title, r.ai_enabled, r.ai_trigger, r.ai_system_prompt, r.ai_model)
        for r in rows
    }


async def roster(c: AsyncConnection, session_id: str) -> list[tuple[str, str]]:
    """The session's members (user id, role) in join order."""
    rows = await c.execute(
        select(members.c.user_id, members.c.role)
        .where(members.c.session_id == session_id)
        .order_by(members.c.joined_at, members.c.user_id)
    )
    return [(r.user_id, r.role) for r in rows]


async def remove_members(c: AsyncConnection, gone: Sequence[tuple[str, str]]) -> None:
    if gone:
        await c.execute(
            members.delete().where(members.c.session_id == bindparam("sid"), members.c.user_id == bindparam("uid")),
            [{"sid": sid, "uid": uid} for sid, uid in gone],
        )


async def set_read_markers(c: AsyncConnection, markers: dict[tuple[str, str], int]) -> None:
    """(session, user) → the read marker it moves forward to."""
    if markers:
        await c.execute(
            update(members)
            .where(members.c.session_id == bindparam("sid"), members.c.user_id == bindparam("uid"))
            .values(last_read_seq=bindparam("seq")),
            [{"sid": sid, "uid": uid, "seq": seq} for (sid, uid), seq in markers.items()],
        )


async def set_roles(c: AsyncConnection, roles: Sequence[tuple[str, str, str]]) -> None:
    """(session, user, role) for members whose role changed (a new owner)."""
    if roles:
        await c.execute(
            update(members)
            .where(members.c.session_id == bindparam("sid"), members.c.user_id == bindparam("uid"))
            .values(role=bindparam("r")),
            [{"sid": sid, "uid": uid, "r": role} for sid, uid, role in roles],
        )


async def update_sessions(c: AsyncConnection, changed: dict[str, dict[str, Any]]) -> None:
    """Write sessions' changed settings (session id → column → value)."""
    for session_id, values in changed.items():
        await c.execute(update(sessions).where(sessions.c.session_id == session_id).values(**values))


async def create_sessions(c: AsyncConnection, owners: dict[str, str], now: datetime) -> list[str]:
    """Sessions that first messages create, their senders as owners; the ids that were new (a concurrent
    writer may have created some already)."""
    if not owners:
        return []
    dialect_insert = pg_insert if c.dialect.name == "postgresql" else sqlite_insert
    created = []
    for session_id, owner in owners.items():
        result = await c.execute(
            dialect_insert(sessions)
            .values(
                session_id=session_id,
                title=None,
                created_by=owner,
                ai_enabled=True,
                last_seq=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        if result.rowcount:
            created.append(session_id)
    if created:
        await c.execute(
            insert(members),
            [{"session_id": sid, "user_id": owners[sid], "role": "owner", "joined_at": now} for sid in created],
        )
    return created


async def memberships(c: AsyncConnection, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Membership]:
    """The (session, user) pairs that are memberships; read after the sessions are locked, so it is current."""
    wanted = list(set(pairs))
    if not wanted:
        return {}
    if _postgres(c):
        found = await c.execute(_PG_MEMBERSHIPS, {"s": [p[0] for p in wanted], "u": [p[1] for p in wanted]})
        return {(r.session_id, r.user_id): Membership(r.role, r.joined_at, r.last_read_seq) for r in found}
    rows = await c.execute(
        select(
            members.c.session_id, members.c.user_id, members.c.role, members.c.joined_at, members.c.last_read_seq
        ).where(tuple_(members.c.session_id, members.c.user_id).in_(wanted))
    )
    return {(r.session_id, r.user_id): Membership(r.role, r.joined_at, r.last_read_seq) for r in rows}


async def insert_members(c: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await c.execute(insert(members), list(rows))


async def append_rows(
    c: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    last_seqs: dict[str, int],
    read_up_to: dict[tuple[str, str], int],
    now: datetime,
) -> list[int]:
    """Insert message rows (every column but `id`), move their sessions' `last_seq`, and the senders' read
    markers to what they sent (SPEC §12: markers only move forward); the rows' ids, in order."""
    if _postgres(c):  # one statement, one round trip
        params: dict[str, Any] = {name: [row.get(name) for row in rows] for name in _MESSAGE_COLUMNS}
        params["data"] = [json.dumps(d) if d is not None else None for d in params["data"]]
        params |= {"adv_sid": list(last_seqs), "adv_seq": list(last_seqs.values()), "now": now}
        params |= {
            "mk_sid": [sid for sid, _ in read_up_to],
            "mk_uid": [uid for _, uid in read_up_to],
            "mk_seq": list(read_up_to.values()),
        }
        ids = {r.message_id: r.id for r in await c.execute(_PG_APPEND, params)}
        return [ids[row["message_id"]] for row in rows]
    result = await c.execute(insert(messages).returning(messages.c.id, sort_by_parameter_order=True), list(rows))
    inserted = [row.id for row in result]
    await c.execute(
        update(sessions)
        .where(sessions.c.session_id == bindparam("sid"))
        .values(last_seq=bindparam("seq"), updated_at=now),
        [{"sid": sid, "seq": seq} for sid, seq in last_seqs.items()],
    )
    if read_up_to:
        await c.execute(
            update(members)
            .where(members.c.session_id == bindparam("sid"), members.c.user_id == bindparam("uid"))
            .values(last_read_seq=func.max(members.c.last_read_seq, bindparam("seq"))),  # SQLite's two-argument max
            [{"sid": sid, "uid": uid, "seq": seq} for (sid, uid), seq in read_up_to.items()],
        )
    return inserted


async def insert_records(c: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await c.execute(insert(records), list(rows))


async def finish_records(
    c: AsyncConnection, ends: Sequence[tuple[str, str | None, RecordOutcome]], now: datetime
) -> None:
    """Close reply records: (record id, id of the stored AI message or None, outcome)."""
    if not ends:
        return
    await c.execute(
        update(records)
        .where(records.c.record_id == bindparam("rid"))
        .values(
            status=bindparam("st"),
            finish_reason=bindparam("fr"),
            request_content=bindparam("req"),
            response_content=bindparam("resp"),
            ai_message_id=bindparam("aid"),
            duration_ms=bindparam("dur"),
            first_token_ms=bindparam("ftm"),
            prompt_tokens=bindparam("pt"),
            completion_tokens=bindparam("ct"),
            error_message=bindparam("err"),
            updated_at=now,
        ),
        [
            {
                "rid": record_id,
                "aid": message_id,
                "st": int(o.status),
                "fr": o.finish_reason,
                "req": o.request_content,
                "resp": o.response_content,
                "dur": o.duration_ms,
                "ftm": o.first_token_ms,
                "pt": o.prompt_tokens,
                "ct": o.completion_tokens,
                "err": o.error_message,
            }
            for record_id, message_id, o in ends
        ],
    )


async def targets(c: AsyncConnection, message_ids: Iterable[str]) -> dict[str, Target]:
    """The messages that changes point at, as they are stored now (their sessions are locked)."""
    wanted = list(set(message_ids))
    if not wanted:
        return {}
    rows = await c.execute(select(messages).where(messages.c.message_id.in_(wanted)))
    return {
        r.message_id: Target(
            id=r.id,
            message_id=r.message_id,
            session_id=r.session_id,
            seq=r.seq,
            from_user_id=r.from_user_id,
            msg_type=r.msg_type,
            msg_content=r.msg_content,
            client_msg_id=r.client_msg_id,
            created_at=r.created_at,
            target_message_id=r.target_message_id,
            data=r.data,
            edited_at=r.edited_at,
            deleted_at=r.deleted_at,
            reactions=dict(r.reactions or {}),
        )
        for r in rows
    }


async def fold_targets(c: AsyncConnection, folded: Sequence[Target], now: datetime) -> None:
    """Write back the folded state of the messages a batch changed."""
    if not folded:
        return
    await c.execute(
        update(messages)
        .where(messages.c.message_id == bindparam("mid"))
        .values(
            msg_content=bindparam("content"),
            edited_at=bindparam("edited"),
            deleted_at=bindparam("deleted"),
            reactions=bindparam("reactions"),
            updated_at=now,
        ),
        [
            {
                "mid": t.message_id,
                "content": t.msg_content,
                "edited": t.edited_at,
                "deleted": t.deleted_at,
                "reactions": t.reactions or None,
            }
            for t in folded
        ],
    )


async def stored(c: AsyncConnection, message_ids: list[str]) -> int:
    """How many of these messages exist: after a commit whose answer was lost, whether it happened."""
    rows = await c.execute(select(messages.c.message_id).where(messages.c.message_id.in_(message_ids)))
    return len(rows.all())


async def closed_records(c: AsyncConnection, record_ids: list[str]) -> int:
    """How many of these records are no longer at status 0."""
    rows = await c.execute(
        select(records.c.record_id).where(
            records.c.record_id.in_(record_ids), records.c.status != int(RecordStatus.PROCESSING)
        )
    )
    return len(rows.all())


def _postgres(c: AsyncConnection) -> bool:
    return c.dialect.name == "postgresql"


_MESSAGE_COLUMNS = (
    "message_id",
    "session_id",
    "seq",
    "from_user_id",
    "msg_type",
    "msg_content",
    "client_msg_id",
    "created_at",
    "updated_at",
    "target_message_id",
    "data",
)
_SESSION_STATE = ("session_id", "last_seq", "title", "ai_enabled", "ai_trigger", "ai_system_prompt", "ai_model")
_PG_LOCK = text(
    f"SELECT {', '.join(_SESSION_STATE)} FROM sessions"
    " WHERE session_id = ANY(CAST(:ids AS TEXT[])) ORDER BY session_id FOR UPDATE"
)
_PG_MEMBERSHIPS = text(
    "SELECT m.session_id, m.user_id, m.role, m.joined_at, m.last_read_seq FROM session_members m"
    " JOIN unnest(CAST(:s AS TEXT[]), CAST(:u AS TEXT[])) AS w(sid, uid)"
    " ON m.session_id = w.sid AND m.user_id = w.uid"
)
_PG_APPEND = text(
    "WITH advanced AS (UPDATE sessions SET last_seq = w.seq, updated_at = :now"
    " FROM unnest(CAST(:adv_sid AS TEXT[]), CAST(:adv_seq AS BIGINT[])) AS w(sid, seq)"
    " WHERE sessions.session_id = w.sid RETURNING 1),"
    " marked AS (UPDATE session_members SET last_read_seq = GREATEST(last_read_seq, w.seq)"
    " FROM unnest(CAST(:mk_sid AS TEXT[]), CAST(:mk_uid AS TEXT[]), CAST(:mk_seq AS BIGINT[])) AS w(sid, uid, seq)"
    " WHERE session_members.session_id = w.sid AND session_members.user_id = w.uid RETURNING 1)"
    " INSERT INTO messages (message_id, session_id, seq, from_user_id, msg_type, msg_content, client_msg_id,"
    " created_at, updated_at, target_message_id, data)"
    " SELECT * FROM unnest(CAST(:message_id AS TEXT[]), CAST(:session_id AS TEXT[]), CAST(:seq AS BIGINT[]),"
    " CAST(:from_user_id AS TEXT[]), CAST(:msg_type AS TEXT[]), CAST(:msg_content AS TEXT[]),"
    " CAST(:client_msg_id AS TEXT[]), CAST(:created_at AS TIMESTAMPTZ[]), CAST(:updated_at AS TIMESTAMPTZ[]),"
    " CAST(:target_message_id AS TEXT[]), CAST(:data AS JSON[]))"
    " RETURNING message_id, id"
)
