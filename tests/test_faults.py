"""Faults of the database under load (PostgreSQL): cut connections, and the database out of reach.

Clients send as a careful client does: each message with a client_msg_id, retried on error until
acknowledged. Whatever the database does, a client sees only `not_ready` or `busy` (never
`internal`), and every acknowledged message is stored exactly once, read back at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ServerFactory
from tests.helpers import LiveServer, uid

CLIENTS = 10  # half over REST, half over WebSocket
RETRY_S = 0.02  # a client's pause before it retries
ALLOWED = {"not_ready", "busy"}


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("faults of a database server: PostgreSQL only (SQLite is in-process)")
    return database_url


async def admin_connect(url: str) -> Any:
    """A connection of our own to the server (to its `postgres` database), outside the app's pool."""
    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username, password=parsed.password, database="postgres"
    )


@dataclass
class Client:
    """One client's view: what it was told, and when (monotonic), per attempt."""

    name: str
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # client_msg_id → the stored message
    errors: Counter[str] = field(default_factory=Counter)
    attempts: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, answered, code or "ok")


async def send_until_acked(client: Client, attempt: Callable[[str, str], Any], cmid: str, text: str) -> None:
    while True:
        sent = time.monotonic()
        ok, answer = await attempt(cmid, text)
        client.attempts.append((sent, time.monotonic(), "ok" if ok else answer))
        if ok:
            client.acked[cmid] = answer
            return
        client.errors[answer] += 1
        await asyncio.sleep(RETRY_S)


@contextlib.asynccontextmanager
async def rest_sender(server: LiveServer, user: str, room: str) -> AsyncIterator[Callable[[str, str], Any]]:
    async def attempt(cmid: str, text: str) -> tuple[bool, Any]:
        r = await server.post("/message/send", user, {"session_id": room, "content": text, "client_msg_id": cmid})
        if r.status_code in (200, 201):
            return True, r.json()
        return False, r.json()["error"]["code"]

    yield attempt


@contextlib.asynccontextmanager
async def ws_sender(server: LiveServer, user: str, room: str) -> AsyncIterator[Callable[[str, str], Any]]:
    async with server.ws(user) as ws:

        async def attempt(cmid: str, text: str) -> tuple[bool, Any]:
            answer = await ws.request(
                {"type": "send_message", "session_id": room, "content": text, "client_msg_id": cmid}
            )
            if answer["type"] == "message_sent":
                return True, answer["message"]
            return False, answer["code"]

        yield attempt


async def run_client(
    server: LiveServer, client: Client, user: str, room: str, more: Callable[[Client], bool], over_ws: bool
) -> None:
    opener = ws_sender if over_ws else rest_sender
    async with opener(server, user, room) as attempt:
        n = 0
        while more(client):
            await send_until_acked(client, attempt, f"{client.name}-{n}", f"{client.name} says {n}")
            n += 1


async def read_back(server: LiveServer, user: str, room: str) -> list[dict[str, Any]]:
    stored: list[dict[str, Any]] = []
    while True:
        page = await server.get("/message/list", user, params={"session_id": room, "after_seq": len(stored)})
        assert page.status_code == 200, page.text
        stored += page.json()["messages"]
        if not page.json()["has_more"]:
            return stored


def check_nothing_lost_or_doubled(clients: list[Client], stored: list[dict[str, Any]]) -> int:
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))  # gap-free
    by_cmid = Counter(m["client_msg_id"] for m in stored)
    doubled = [cmid for cmid, n in by_cmid.items() if n > 1]
    stored_by_cmid = {m["client_msg_id"]: m for m in stored}
    acked = {cmid: m for c in clients for cmid, m in c.acked.items()}
    lost = [cmid for cmid, m in acked.items() if stored_by_cmid.get(cmid, {}).get("message_id") != m["message_id"]]
    assert not lost and not doubled, (lost, doubled)
    assert set(by_cmid) == set(acked)  # and nothing stored that nobody was told about
    return len(acked)


async def members_room(server: LiveServer, count: int) -> tuple[list[str], str]:
    users = [uid(f"c{i}-") for i in range(count)]
    return users, await server.room(users[0], *users[1:])


async def test_connections_cut_in_a_loop_lose_and_double_nothing(make_server: ServerFactory, postgres_url: str) -> None:
    server = await make_server()
    users, room = await members_room(server, CLIENTS)
    clients = [Client(f"c{i}") for i in range(CLIENTS)]
    per_client = 30
    database = make_url(postgres_url).database
    admin = await admin_connect(postgres_url)
    stop, cuts = asyncio.Event(), 0

    async def cut_in_a_loop() -> None:
        nonlocal cuts
        while not stop.is_set():
            cuts += await admin.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()) AS cut",
                database,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)  # the pace of the fault, not a wait for a condition

    cutter = asyncio.create_task(cut_in_a_loop())
    try:
        await asyncio.gather(
            *(
                run_client(server, c, u, room, lambda c: len(c.acked) < per_client, over_ws=i % 2 == 1)
                for i, (c, u) in enumerate(zip(clients, users, strict=True))
            )
        )
    finally:
        stop.set()
        await cutter
        await admin.close()
    seen = sum((c.errors for c in clients), Counter())
    assert set(seen) <= ALLOWED, seen
    acked = check_nothing_lost_or_doubled(clients, await read_back(server, users[0], room))
    assert acked == CLIENTS * per_client and cuts > 0
    print(f"\ncut loop: {cuts} backends cut, {acked} acked, 0 lost or doubled, errors {dict(seen)}", file=sys.stderr)


async def test_a_history_page_on_a_cut_connection_is_not_ready_and_the_next_is_read(
    make_server: ServerFactory, postgres_url: str
) -> None:
    """History pages are read through asyncpg itself (store.history): a connection found cut is answered
    not_ready and retired with every older one in the pool, as SQLAlchemy does for its own statements."""
    server = await make_server()
    user = uid()
    room = await server.room(user)
    await server.send(user, room, "hello")
    params = {"session_id": room, "before_seq": 10}
    pages = await asyncio.gather(*(server.get("/message/list", user, params=params) for _ in range(8)))
    assert {r.status_code for r in pages} == {200}  # read at once: the pool holds several connections
    admin = await admin_connect(postgres_url)
    try:
        cut = await admin.fetchval(  # each backend gone when this returns (or after 10 s)
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()) AS cut",
            make_url(postgres_url).database,
        )
    finally:
        await admin.close()
    assert cut >= 2
    answers = []
    for _ in range(8):
        r = await server.get("/message/list", user, params=params)
        answers.append(r.json()["error"]["code"] if r.status_code != 200 else len(r.json()["messages"]))
    assert answers == ["not_ready"] + [1] * 7, answers


async def test_a_page_cancelled_mid_statement_leaves_no_busy_connection_in_the_pool(postgres_url: str) -> None:
    """A page cancelled while PostgreSQL runs its statement (the WebSocket that asked for a sync went away):
    its connection goes back to the pool while asyncpg is still cancelling the statement, and serves the next
    page at once (asyncpg makes it wait for the cancellation) instead of failing it as busy."""
    from imsvc import store
    from imsvc.db import Database

    url = make_url(postgres_url)
    direct = {
        "host": url.host,
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "database": url.database,
    }
    room, user = uid("s"), uid()
    setup = await asyncpg.connect(**direct)
    try:
        await setup.execute(
            "INSERT INTO sessions (session_id, created_by, ai_enabled, last_seq, created_at, updated_at)"
            " VALUES ($1, $2, false, 0, now(), now())",
            room,
            user,
        )
        await setup.execute(
            "INSERT INTO session_members (session_id, user_id, role, joined_at) VALUES ($1, $2, 'owner', now())",
            room,
            user,
        )
    finally:
        await setup.close()
    db = Database(postgres_url)

    async def page() -> store.History:
        async with db.read_connection() as conn:
            return await store.history(conn, room, user, store.NO_BOUND, newest_first=True, limit=10)

    try:
        assert (await page()).messages == []  # the pool holds one connection now
        locker = await asyncpg.connect(**direct)
        await locker.execute("BEGIN; LOCK TABLE session_members IN ACCESS EXCLUSIVE MODE")
        blocked = asyncio.create_task(page())
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
        for _ in range(500):  # until the page's statement waits for the lock (PostgreSQL's state: polled)
            if await locker.fetchval(waiting, url.database):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the page's statement never waited for the lock")
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        locker.terminate()  # the lock goes with the connection, and nothing here waits for that
        assert (await page()).last_seq == 0  # at once: asyncpg is still cancelling the first statement
    finally:
        await db.dispose()


class Proxy:
    """A TCP proxy to PostgreSQL that can be taken down: new connections refused, open ones cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()  # is_serving() is False from now on
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self._server is None or not self._server.is_serving():  # taken down while this one connected
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[Proxy]:
    parsed = make_url(postgres_url)
    found = Proxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    await found.up()
    yield found
    await found.down()


async def test_a_database_out_of_reach_is_not_ready_and_then_nothing_is_lost(
    proxy: Proxy, make_server: ServerFactory, postgres_url: str
) -> None:
    proxied = make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    server = await make_server(database_url=proxied)
    users, room = await members_room(server, CLIENTS)
    clients = [Client(f"c{i}") for i in range(CLIENTS)]
    outage = 3.0
    phase = {"down": 0.0, "up": 0.0}  # monotonic times of the outage's start and end
    warmed = asyncio.Event()

    def more(client: Client) -> bool:
        """Until the outage is over, and then until the client has had 5 messages through."""
        if all(len(c.acked) >= 3 for c in clients):
            warmed.set()
        if not phase["up"]:
            return True
        return sum(1 for sent, _, code in client.attempts if code == "ok" and sent > phase["up"]) < 5

    async def take_down() -> None:
        await asyncio.wait_for(warmed.wait(), 10)  # every client is sending
        phase["down"] = time.monotonic()
        await proxy.down()
        await asyncio.sleep(outage)  # the length of the fault, not a wait for a condition
        await proxy.up()
        phase["up"] = time.monotonic()

    fault = asyncio.create_task(take_down())
    await asyncio.gather(
        *(
            run_client(server, c, u, room, more, over_ws=i % 2 == 1)
            for i, (c, u) in enumerate(zip(clients, users, strict=True))
        )
    )
    await fault
    attempts = [a for c in clients for a in c.attempts]
    during = [code for sent, answered, code in attempts if sent > phase["down"] and answered < phase["up"]]
    assert during and set(during) == {"not_ready"}, Counter(during)  # felt by every client, and only as not_ready
    seen = sum((c.errors for c in clients), Counter())
    assert set(seen) == {"not_ready"}, seen
    acked = check_nothing_lost_or_doubled(clients, await read_back(server, users[0], room))
    print(f"\noutage: {len(during)} requests during {outage} s, all not_ready; {acked} acked, 0 lost", file=sys.stderr)
