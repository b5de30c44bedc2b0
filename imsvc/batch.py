"""One group commit: the ops waiting at the sequencer, checked, numbered and written in one transaction.

Each op becomes an item with a result (or an error of its own) and, when it stores a row, that
row's `seq` and the event to publish. Changes to one message within a batch are folded one after
the other, on the state each leaves, exactly as replaying their rows in seq order would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from imsvc import changes, ledger
from imsvc.changes import Kind, Target
from imsvc.errors import Conflict, Forbidden, ImsvcError, NotFound
from imsvc.events import Event
from imsvc.ledger import Original, RecordOutcome
from imsvc.models import RecordStatus
from imsvc.schemas import (
    ErrorDetail,
    FrameId,
    MessageOut,
    NewMessageFrame,
    ReadMarkerFrame,
    final_reply_frame,
    message_out,
)
from imsvc.store import new_id


@dataclass(frozen=True, slots=True)
class ReplySettings:
    """What a reply uses, taken from its session when it is queued (SPEC §11)."""

    model: str
    system_prompt: str


@dataclass(frozen=True, slots=True)
class Send:
    """A user's message. `assistant`: the server's defaults when it has an assistant (a reply is started,
    a record at status 0, if the session has it on and its trigger fires); `mentions`: whether the text
    mentions the assistant (for `ai_trigger: mention`)."""

    session_id: str
    author: str
    content: str
    client_msg_id: str | None = None
    assistant: ReplySettings | None = None
    mentions: bool = False
    origin: str | None = None
    ref: FrameId | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """An edit (`value`: the new text), a delete, or a reaction added or removed (`value`: the emoji)."""

    kind: Kind
    session_id: str
    actor: str
    message_id: str
    value: str = ""
    client_msg_id: str | None = None
    origin: str | None = None
    ref: FrameId | None = None


@dataclass(frozen=True, slots=True)
class AddMember:
    """Any member may add a user; a `MEMBER` event tells everyone, the added user's sockets included."""

    session_id: str
    actor: str
    user_id: str


@dataclass(frozen=True, slots=True)
class RemoveMember:
    """The owner removes another member (`removed`), or a member leaves (`left`); an owner who leaves hands
    the session to the member who joined earliest."""

    session_id: str
    actor: str
    user_id: str


@dataclass(frozen=True, slots=True)
class Configure:
    """The owner changes the session's settings: only the fields given, each a column of `sessions`."""

    session_id: str
    actor: str
    values: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class MarkRead:
    """A member's read marker moves forward to `seq`, clamped to the session's last_seq (SPEC §12)."""

    session_id: str
    user_id: str
    seq: int
    origin: str | None = None
    ref: FrameId | None = None


@dataclass(frozen=True, slots=True)
class ReplyEnd:
    """An AI reply's outcome: its text stored as the assistant's message (when there is any), its record closed."""

    session_id: str
    record_id: str
    user_message_id: str
    author: str
    text: str
    outcome: RecordOutcome
    error: ImsvcError | None = None  # None: the reply ended (`ai_reply`); else `ai_reply_error` with this code


Op = Send | Change | AddMember | RemoveMember | Configure | MarkRead | ReplyEnd


@dataclass(frozen=True, slots=True)
class Stored:
    message: MessageOut
    duplicate: bool
    record_id: str | None = None
    record_status: RecordStatus | None = None
    reply: ReplySettings | None = None


@dataclass(frozen=True, slots=True)
class Changed:
    """The target as it is now; the change's row (None when nothing changed); whether it repeats a client_msg_id."""

    target: MessageOut
    event: MessageOut | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Added:
    session_id: str
    user_id: str
    role: str
    joined_at: datetime
    created: bool


@dataclass(frozen=True, slots=True)
class Removed:
    session_id: str
    user_id: str
    action: str  # "removed" or "left"


@dataclass(frozen=True, slots=True)
class Configured:
    changed: dict[str, Any]  # the fields that changed, with their new values (empty: nothing did)


@dataclass(frozen=True, slots=True)
class Marked:
    session_id: str
    user_id: str
    last_read_seq: int
    moved: bool


Result = Stored | Changed | Added | Removed | Configured | Marked | MessageOut | None


@dataclass(slots=True)
class Item:
    op: Op
    future: asyncio.Future[Any]
    result: Result = None
    error: Exception | None = None
    same_as: Item | None = None  # a retry (same client_msg_id) of an earlier item of this batch
    row: dict[str, Any] | None = None  # the event row it stores
    record_id: str | None = None
    target: Target | None = None
    reply: ReplySettings | None = None
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()

    def reset(self) -> None:
        self.result = self.error = self.same_as = self.row = self.record_id = self.target = self.reply = None
        self.joined = self.left = ()


def client_key(op: Op) -> tuple[str, str, str] | None:
    if isinstance(op, Send) and op.client_msg_id is not None:
        return (op.session_id, op.author, op.client_msg_id)
    if isinstance(op, Change) and op.client_msg_id is not None:
        return (op.session_id, op.actor, op.client_msg_id)
    return None


def actor_of(op: Op) -> str | None:
    if isinstance(op, Send):
        return op.author
    if isinstance(op, Change | AddMember | RemoveMember | Configure):
        return op.actor
    if isinstance(op, MarkRead):
        return op.user_id
    return None


@dataclass(slots=True)
class Batch:
    items: list[Item]
    now: datetime
    owner: str | None = None
    rows: list[Item] = field(default_factory=list)  # items that store a row, in seq order
    records: list[dict[str, Any]] = field(default_factory=list)
    ends: list[tuple[str, str | None, RecordOutcome]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    gone: list[tuple[str, str]] = field(default_factory=list)
    new_roles: list[tuple[str, str, str]] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, ledger.SessionState] = field(default_factory=dict)
    rosters: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    read_marks: dict[tuple[str, str], int] = field(default_factory=dict)  # moved by this batch
    marker_writes: dict[tuple[str, str], int] = field(default_factory=dict)
    last_seqs: dict[str, int] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    _first_of: dict[tuple[str, str, str], Item] = field(default_factory=dict)

    async def store(self, c: AsyncConnection) -> None:
        """Check, number and write every item (the caller commits)."""
        ops = [item.op for item in self.items]
        found = await ledger.originals(c, {key for op in ops if (key := client_key(op)) is not None})
        state = await ledger.lock_sessions(c, (op.session_id for op in ops))
        owners: dict[str, str] = {}
        for op in ops:
            if isinstance(op, Send) and op.session_id not in state:
                owners.setdefault(op.session_id, op.author)
        created = set(await ledger.create_sessions(c, owners, self.now))
        if owners:
            state |= await ledger.lock_sessions(c, owners)
        pairs = {(op.session_id, who) for op in ops if (who := actor_of(op)) is not None}
        pairs |= {(op.session_id, op.user_id) for op in ops if isinstance(op, AddMember | RemoveMember)}
        roles = await ledger.memberships(c, pairs)
        wanted = {op.message_id for op in ops if isinstance(op, Change)}
        wanted |= {o.message.target_message_id for o in found.values() if o.message.target_message_id}
        self.targets = await ledger.targets(c, wanted)
        for session_id in {op.session_id for op in ops if isinstance(op, RemoveMember)}:
            self.rosters[session_id] = await ledger.roster(c, session_id)
        self.sessions = state
        self.last_seqs = {sid: s.last_seq for sid, s in state.items()}

        for item in self.items:
            op = item.op
            key = client_key(op)
            if key is not None and key in found:
                try:
                    item.result = self._repeat(op, found[key])
                except ImsvcError as exc:
                    item.error = exc
            elif key is not None and key in self._first_of:
                item.same_as = self._first_of[key]
            elif (op.session_id, actor_of(op)) not in roles and not isinstance(op, ReplyEnd):
                # A change to a message in a session the caller is not in: as if it did not exist.
                item.error = (
                    NotFound("no such message") if isinstance(op, Change) else Forbidden("not a member of this session")
                )
            else:
                if key is not None:
                    self._first_of[key] = item
                try:
                    self._plan(item, roles, created, owners)
                except ImsvcError as exc:
                    item.error = exc

        if self.rows:
            rows = [item.row for item in self.rows if item.row is not None]
            advanced = {sid: self.last_seqs[sid] for sid in {row["session_id"] for row in rows}}
            read = {
                (item.op.session_id, item.op.author): item.row["seq"]
                for item in self.rows
                if isinstance(item.op, Send) and item.row is not None
            }
            for row, row_id in zip(rows, await ledger.append_rows(c, rows, advanced, read, self.now), strict=True):
                row["id"] = row_id
        await ledger.insert_members(c, self.members)
        await ledger.remove_members(c, self.gone)
        await ledger.set_roles(c, self.new_roles)
        await ledger.set_read_markers(c, self.marker_writes)
        await ledger.update_sessions(c, self.settings)
        await ledger.insert_records(c, self.records)
        await ledger.finish_records(c, self.ends, self.now)
        await ledger.fold_targets(c, [t for t in self.targets.values() if t.touched], self.now)

    def _plan(
        self,
        item: Item,
        roles: dict[tuple[str, str], ledger.Membership],
        created: set[str],
        owners: dict[str, str],
    ) -> None:
        op = item.op
        if isinstance(op, Send):
            if op.session_id in created and op.author == owners[op.session_id]:
                created.discard(op.session_id)  # its first message tells the hub who is in it
                item.joined = (op.author,)
            self._add_row(item, op.session_id, op.author, Kind.TEXT, op.content, op.client_msg_id)
            assert item.row is not None
            self.read_marks[(op.session_id, op.author)] = item.row["seq"]  # written with the row
            session = self.sessions[op.session_id]
            fires = session.ai_trigger == "always" or op.mentions
            if op.assistant is not None and session.ai_enabled and fires:
                assert item.row is not None
                item.record_id = new_id("record")
                item.reply = ReplySettings(
                    session.ai_model or op.assistant.model, session.ai_system_prompt or op.assistant.system_prompt
                )
                record = _new_record(item.record_id, op, item.row["message_id"], item.reply.model, self.now)
                self.records.append({**record, "owner": self.owner})
        elif isinstance(op, RemoveMember):
            self._remove(item, op, roles)
        elif isinstance(op, Configure):
            self._configure(item, op, roles)
        elif isinstance(op, MarkRead):
            key = (op.session_id, op.user_id)
            current = self.read_marks.get(key, roles[key].last_read_seq)
            marker = max(current, min(op.seq, self.last_seqs[op.session_id]))
            if marker > current:
                self.read_marks[key] = self.marker_writes[key] = marker
            item.result = Marked(op.session_id, op.user_id, marker, marker > current)
        elif isinstance(op, Change):
            target = self.targets.get(op.message_id)
            if target is None or target.session_id != op.session_id:
                raise NotFound("no such message")
            item.target = target
            is_owner = roles[(op.session_id, op.actor)].role == "owner"
            if changes.apply(op.kind, target, op.actor, is_owner, op.value, self.now):
                self._add_row(item, op.session_id, op.actor, op.kind, op.value, op.client_msg_id, op.message_id)
            else:
                item.result = Changed(message_out(target), None)
        elif isinstance(op, AddMember):
            present = roles.get((op.session_id, op.user_id))
            if present is not None:
                item.result = Added(op.session_id, op.user_id, present.role, present.joined_at, False)
                return
            roles[(op.session_id, op.user_id)] = ledger.Membership("member", self.now)
            member = {"session_id": op.session_id, "user_id": op.user_id, "role": "member", "joined_at": self.now}
            self.members.append(member)
            if op.session_id in self.rosters:
                self.rosters[op.session_id].append((op.user_id, "member"))
            data = {"user_id": op.user_id, "action": "added", "role": "member"}
            self._add_row(item, op.session_id, op.actor, Kind.MEMBER, "", None, data=data)
            assert item.row is not None
            member["last_read_seq"] = item.row["seq"]  # a member added later has read up to their joining
            item.result = Added(op.session_id, op.user_id, "member", self.now, True)
            item.joined = (op.user_id,)
        else:
            if op.text:
                self._add_row(item, op.session_id, op.author, Kind.TEXT, op.text, None)
            self.ends.append((op.record_id, item.row["message_id"] if item.row else None, op.outcome))

    def _remove(self, item: Item, op: RemoveMember, roles: dict[tuple[str, str], ledger.Membership]) -> None:
        actor_role = roles[(op.session_id, op.actor)].role
        present = roles.get((op.session_id, op.user_id))
        if op.user_id != op.actor and actor_role != "owner":
            raise Forbidden("only the owner removes other members")
        if present is None:
            raise NotFound("not a member of this session")
        action = "left" if op.user_id == op.actor else "removed"
        data: dict[str, Any] = {"user_id": op.user_id, "action": action, "role": present.role}
        roster = [(uid, role) for uid, role in self.rosters[op.session_id] if uid != op.user_id]
        if action == "left" and present.role == "owner":
            heir = roster[0][0] if roster else None
            data["new_owner"] = heir
            if heir is not None:
                roster[0] = (heir, "owner")
                known = roles.get((op.session_id, heir))
                roles[(op.session_id, heir)] = ledger.Membership("owner", known.joined_at if known else self.now)
                self.new_roles.append((op.session_id, heir, "owner"))
        self.rosters[op.session_id] = roster
        del roles[(op.session_id, op.user_id)]
        self.gone.append((op.session_id, op.user_id))
        self._add_row(item, op.session_id, op.actor, Kind.MEMBER, "", None, data=data)
        item.result = Removed(op.session_id, op.user_id, action)
        item.left = (op.user_id,)

    def _configure(self, item: Item, op: Configure, roles: dict[tuple[str, str], ledger.Membership]) -> None:
        if roles[(op.session_id, op.actor)].role != "owner":
            raise Forbidden("only the session's owner changes its settings")
        session = self.sessions[op.session_id]
        changed = {name: value for name, value in op.values if getattr(session, name) != value}
        item.result = Configured(changed)
        if not changed:
            return
        for name, value in changed.items():
            setattr(session, name, value)
        self.settings.setdefault(op.session_id, {}).update(changed)
        self._add_row(item, op.session_id, op.actor, Kind.SETTINGS, "", None, data=changed)

    def _add_row(
        self,
        item: Item,
        session_id: str,
        author: str,
        kind: Kind,
        content: str,
        client_msg_id: str | None,
        target_message_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        seq = self.last_seqs[session_id] + 1
        self.last_seqs[session_id] = seq
        item.row = {
            "message_id": new_id("msg"),
            "session_id": session_id,
            "seq": seq,
            "from_user_id": author,
            "msg_type": str(kind),
            "msg_content": content,
            "client_msg_id": client_msg_id,
            "created_at": self.now,
            "updated_at": self.now,
            "target_message_id": target_message_id,
            "data": data,
        }
        self.rows.append(item)

    def _repeat(self, op: Op, original: Original) -> Stored | Changed:
        """The answer to a repeated client_msg_id: what the first attempt made (409 when it made another
        kind of thing: a message answered as a reaction, say)."""
        message = original.message
        kind = Kind.TEXT if isinstance(op, Send) else op.kind if isinstance(op, Change) else None
        if message.msg_type != kind:
            raise Conflict("this client_msg_id was used for another kind of request")
        if isinstance(op, Send):
            return Stored(message, True, original.record_id, original.record_status)
        target = self.targets.get(message.target_message_id or "")
        return Changed(message_out(target) if target is not None else message, message, duplicate=True)

    def outcome(self, item: Item) -> tuple[Result, Exception | None, Event | None]:
        """After the commit: the item's result or error, and the event to publish."""
        if item.same_as is not None:
            first = item.same_as
            if first.error is not None or (first.row is None and first.result is None):
                return None, first.error or RuntimeError("the original failed"), None
            return _repeated(self.outcome(first)[0]), None, None
        op = item.op
        if isinstance(op, MarkRead) and isinstance(item.result, Marked) and item.result.moved:
            marker = ReadMarkerFrame(
                session_id=op.session_id, user_id=op.user_id, last_read_seq=item.result.last_read_seq
            )
            return item.result, None, Event(op.session_id, marker, origin=op.origin, ref=op.ref)
        if item.error is not None or (item.result is not None and item.row is None):
            return item.result, item.error, None
        message = message_out(SimpleNamespace(**item.row)) if item.row is not None else None
        if isinstance(op, Send):
            assert message is not None
            status = RecordStatus.PROCESSING if item.record_id else None
            event = Event(op.session_id, NewMessageFrame(message=message), message.seq, op.origin, op.ref, item.joined)
            return Stored(message, False, item.record_id, status, item.reply), None, event
        if isinstance(op, Change):
            assert message is not None and item.target is not None
            event = Event(op.session_id, NewMessageFrame(message=message), message.seq, op.origin, op.ref)
            return Changed(message_out(item.target), message), None, event
        if isinstance(op, AddMember | RemoveMember | Configure):
            assert message is not None
            row = NewMessageFrame(message=message)
            return item.result, None, Event(op.session_id, row, message.seq, joined=item.joined, left=item.left)
        assert isinstance(op, ReplyEnd)
        error = ErrorDetail(code=op.error.code, message=op.error.message) if op.error else None
        final = final_reply_frame(
            op.record_id, op.session_id, op.user_message_id, op.text, message, op.outcome.finish_reason, error
        )
        return message, None, Event(op.session_id, final, message.seq if message else None)


def _repeated(result: Result) -> Result:
    if isinstance(result, Stored):
        return Stored(result.message, True, result.record_id, result.record_status, result.reply)
    if isinstance(result, Changed):
        return Changed(result.target, result.event, duplicate=True)
    return result


def _new_record(record_id: str, op: Send, message_id: str, model: str, now: datetime) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "session_id": op.session_id,
        "user_message_id": message_id,
        "request_content": "",
        "status": int(RecordStatus.PROCESSING),
        "model": model,
        "created_at": now,
        "updated_at": now,
    }
