"""`GET /sessions` for a user in 200 sessions of 10,000 messages each, with `unread` on every session (SPEC §12).

    .venv/bin/python -m tests.bench.sessions_list            (--sessions 200 --messages 10000 --requests 200)

A fresh PostgreSQL database (as `make bench`), seeded in SQL: every message written by someone else,
so that each counts as unread up to the reader's marker. Two cases: the reader has read all but the
last 50 of each session (as people do), and nothing at all (10,000 unread in each). One client, one
request at a time, against a real `imsvc serve`; prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx

from tests.bench.procs import serve
from tests.bench.seed import DEFAULT_URL, bench_database, connect
from tests.bench.stats import latency_fields
from tests.helpers import auth

READER, WRITER = "lister", "writer"


async def seed(url: str, sessions: int, messages: int) -> None:
    conn = await connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO sessions (session_id, title, created_by, ai_enabled, last_seq, created_at, updated_at)"
                " SELECT 'list_' || s, 'session ' || s, $1, false, $2, now(), now() - make_interval(secs => s)"
                " FROM generate_series(1, $3::bigint) AS s",
                WRITER,
                messages,
                sessions,
            )
            await conn.execute(
                "INSERT INTO session_members (session_id, user_id, role, joined_at)"
                " SELECT 'list_' || s, u, CASE WHEN u = $1 THEN 'owner' ELSE 'member' END, now()"
                " FROM generate_series(1, $2::bigint) AS s, unnest(ARRAY[$1, $3]) AS u",
                WRITER,
                sessions,
                READER,
            )
            await conn.execute(
                "INSERT INTO messages (message_id, session_id, seq, from_user_id, msg_type, msg_content,"
                " created_at, updated_at)"
                " SELECT 'msg_list_' || s || '_' || n, 'list_' || s, n, $1, 'TEXT', 'message ' || n, now(), now()"
                " FROM generate_series(1, $2::bigint) AS s, generate_series(1, $3::bigint) AS n",
                WRITER,
                sessions,
                messages,
            )
        await conn.execute("ANALYZE sessions, session_members, messages")
    finally:
        await conn.close()


async def mark(url: str, seq: int) -> None:
    conn = await connect(url)
    try:
        await conn.execute("UPDATE session_members SET last_read_seq = $1 WHERE user_id = $2", seq, READER)
    finally:
        await conn.close()


async def measure(base: str, requests: int, unread: int) -> dict[str, float | None]:
    latencies = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for n in range(requests + 5):
            started = time.perf_counter()
            r = await client.get("/sessions", headers=auth(READER))
            elapsed = (time.perf_counter() - started) * 1000
            listed = r.json()["sessions"]
            assert r.status_code == 200 and len(listed) == 200 and {s["unread"] for s in listed} == {unread}
            if n >= 5:  # warm-up
                latencies.append(elapsed)
    return latency_fields(latencies)


async def main(options: argparse.Namespace) -> None:
    async with bench_database(options.database_url) as url:
        await seed(url, options.sessions, options.messages)
        async with serve(url, {"LOG_LEVEL": "WARNING", "RATE_LIMIT_MESSAGES": "0"}) as server:
            for unread in (50, options.messages):
                await mark(url, options.messages - unread)
                fields = await measure(server.url, options.requests, unread)
                line = {"name": "sessions_list", "sessions": options.sessions, "messages": options.messages}
                print(json.dumps({**line, "unread_each": unread, **fields}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
