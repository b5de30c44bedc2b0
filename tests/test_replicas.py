"""Several processes on one PostgreSQL (BUS=postgres): delivery in order across them, cancel and sync of a
reply running on another process, the replies of a process that died, a cut LISTEN link."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect

from tests import fakellm
from tests.conftest import _admin
from tests.fakellm import FakeLLM
from tests.helpers import ServerProcess, WsClient, auth, serve_process, token, uid

fake_llm = fakellm.fake_llm

BUS = {"BUS": "postgres", "RATE_LIMIT_MESSAGES": "0", "REPLICA_HEARTBEAT_S": "0.2", "REPLICA_TIMEOUT_S": "1.5"}


@pytest.fixture
def pg_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("BUS=postgres: PostgreSQL only")
    return database_url


@pytest_asyncio.fixture
async def replicas(pg_url: str, fake_llm: FakeLLM) -> AsyncIterator[list[ServerProcess]]:
    ai = {"AI_PROVIDER": "openai", "AI_API_KEY": "k", "AI_BASE_URL": fake_llm.url, "AI_TIMEOUT_S": "20"}
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve_process(pg_url, **BUS, **ai)) for _ in range(2)]


async def socket_to(server: ServerProcess, user: str, stack: AsyncExitStack) -> WsClient:
    conn = await stack.enter_async_context(connect(f"{server.ws_url}/ws?token={token(user)}", max_size=None))
    return WsClient(conn)


async def post(server: ServerProcess, user: str, path: str, body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.post(path, json=body, headers=auth(user))
    assert r.status_code in (200, 201, 202), r.text
    found: dict[str, Any] = r.json()
    return found


async def test_every_socket_gets_every_message_once_in_order_across_processes(
    replicas: list[ServerProcess],
) -> None:
    a, b = replicas
    users = [uid(), uid(), uid()]
    room = uid("s")
    await post(a, users[0], "/sessions", {"session_id": room, "members": users[1:], "ai_enabled": False})
    async with AsyncExitStack() as stack:
        sockets = [
            await socket_to(server, user, stack)
            for server, user in ((a, users[0]), (b, users[1]), (b, users[2]), (a, users[1]))
        ]

        async def sender(server: ServerProcess, user: str) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                for n in range(15):
                    r = await client.post(
                        "/message/send", json={"session_id": room, "content": f"{user} {n}"}, headers=auth(user)
                    )
                    assert r.status_code == 201, r.text

        await asyncio.gather(sender(a, users[0]), sender(b, users[1]), sender(b, users[2]))
        for ws in sockets:
            seqs = []
            while len(seqs) < 45:
                frame = await ws.recv()
                assert frame["type"] == "new_message"
                seqs.append(frame["message"]["seq"])
            assert seqs == list(range(1, 46))  # exactly once, in seq order, whichever process stored it
            await ws.nothing_more()


async def test_a_reply_on_one_process_is_synced_and_cancelled_from_another(
    replicas: list[ServerProcess], fake_llm: FakeLLM
) -> None:
    a, b = replicas
    fake_llm.mode = "hang"
    alice, bob = uid(), uid()
    room = uid("s")
    await post(a, alice, "/sessions", {"session_id": room, "members": [bob]})
    async with AsyncExitStack() as stack:
        bob_b = await socket_to(b, bob, stack)
        sent = await post(a, alice, "/message/send", {"session_id": room, "content": "go"})
        record_id = sent["ai_record_id"]
        await bob_b.recv_type("ai_reply_delta")
        synced = await bob_b.request({"type": "sync", "session_id": room, "after_seq": 0})
        assert [m["seq"] for m in synced["messages"]] == [1]
        snapshot = await bob_b.recv_type("ai_reply_snapshot")
        assert snapshot["record_id"] == record_id and snapshot["content"]
        await bob_b.send({"type": "ai_cancel", "record_id": record_id})  # the reply runs on a, bob is on b
        final = await bob_b.recv_type("ai_reply")
        assert final["record_id"] == record_id and final["finish_reason"] == "cancelled"
    async with httpx.AsyncClient(base_url=b.url) as client:
        record = (await client.get(f"/ai/records/{record_id}", headers=auth(alice))).json()
    assert record["status"] == 3


async def test_the_replies_of_a_process_that_died_are_ended_by_a_survivor(pg_url: str, fake_llm: FakeLLM) -> None:
    fake_llm.mode = "hang"
    ai = {"AI_PROVIDER": "openai", "AI_API_KEY": "k", "AI_BASE_URL": fake_llm.url}
    alice = uid()
    room = uid("s")
    async with serve_process(pg_url, **BUS, **ai) as survivor:
        async with serve_process(pg_url, **BUS, **ai) as doomed, AsyncExitStack() as stack:
            await post(survivor, alice, "/sessions", {"session_id": room})
            watcher = await socket_to(survivor, alice, stack)
            sent = await post(doomed, alice, "/message/send", {"session_id": room, "content": "go"})
            await watcher.recv_type("ai_reply_delta")
            doomed.proc.send_signal(signal.SIGKILL)  # no shutdown, no heartbeat any more
            await doomed.proc.wait()
            ended = await watcher.recv_type("ai_reply_error", timeout=15)
            assert ended["record_id"] == sent["ai_record_id"] and ended["error"]["code"] == "interrupted"
        async with httpx.AsyncClient(base_url=survivor.url) as client:
            record = (await client.get(f"/ai/records/{sent['ai_record_id']}", headers=auth(alice))).json()
        assert (record["status"], record["finish_reason"]) == (2, "interrupted")


async def test_a_cut_listen_link_makes_its_sockets_resync(replicas: list[ServerProcess], pg_url: str) -> None:
    a, b = replicas
    alice, bob = uid(), uid()
    room = uid("s")
    await post(a, alice, "/sessions", {"session_id": room, "members": [bob], "ai_enabled": False})
    async with AsyncExitStack() as stack:
        bob_b = await socket_to(b, bob, stack)
        await _admin(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")
        code, _ = await bob_b.closed(timeout=15)
        assert code == 1012  # told to reconnect and sync
    async with AsyncExitStack() as stack:
        bob_b = await socket_to(b, bob, stack)
        sent = await post(a, alice, "/message/send", {"session_id": room, "content": "after the cut"})
        frame = await bob_b.recv_type("new_message")
        assert frame["message"]["message_id"] == sent["message_id"]


async def test_the_sse_stream_on_one_process_follows_a_reply_on_another(
    replicas: list[ServerProcess], fake_llm: FakeLLM
) -> None:
    a, b = replicas
    fake_llm.mode = "hang"
    alice = uid()
    room = uid("s")
    await post(a, alice, "/sessions", {"session_id": room})
    async with AsyncExitStack() as stack:
        watcher = await socket_to(b, alice, stack)  # b hears the reply's frames, so it can follow it
        sent = await post(a, alice, "/message/send", {"session_id": room, "content": "go"})
        await watcher.recv_type("ai_reply_delta")
        events: list[str] = []
        async with httpx.AsyncClient(base_url=b.url, timeout=15) as client:
            url = f"/ai/records/{sent['ai_record_id']}/stream"
            async with client.stream("GET", url, headers=auth(alice)) as r:
                lines = r.aiter_lines()
                async for line in lines:
                    if line.startswith("event: "):
                        events.append(line.removeprefix("event: "))
                        if events == ["snapshot"]:
                            fake_llm.release.set()
                        if events[-1] in ("done", "error"):
                            break
    assert events[0] == "snapshot" and events[-1] == "done" and "delta" in events


async def test_presence_counts_the_sockets_of_every_process(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    alice, bob = uid(), uid()
    room = uid("s")
    await post(a, alice, "/sessions", {"session_id": room, "members": [bob], "ai_enabled": False})
    async with AsyncExitStack() as outer:
        conn = await outer.enter_async_context(connect(f"{b.ws_url}/ws?token={token(bob)}"))
        watcher = WsClient(conn, presence=True)
        async with AsyncExitStack() as on_a:
            await socket_to(a, alice, on_a)
            assert await watcher.recv() == {"type": "presence", "user_id": alice, "online": True}
            async with AsyncExitStack() as on_b:
                await socket_to(b, alice, on_b)  # her first socket on b, not her first anywhere
                await watcher.nothing_more()
                async with httpx.AsyncClient(base_url=b.url) as client:
                    members = (await client.get(f"/sessions/{room}", headers=auth(bob))).json()["members"]
                assert [m["online"] for m in members] == [True, True]
            await watcher.nothing_more()  # she still has a socket on a
        assert await watcher.recv() == {"type": "presence", "user_id": alice, "online": False}


async def test_serve_with_workers_delivers_across_them(pg_url: str) -> None:
    alice, bob = uid(), uid()
    room = uid("s")
    async with serve_process(pg_url, "--workers", "2", **BUS) as server, AsyncExitStack() as stack:
        await post(server, alice, "/sessions", {"session_id": room, "members": [bob], "ai_enabled": False})
        # Connections go to either worker: with eight sockets, both hold some (and each gets every message).
        sockets = [await socket_to(server, user, stack) for user in (alice, bob) * 4]
        sent = [await post(server, alice, "/message/send", {"session_id": room, "content": str(n)}) for n in range(5)]
        for ws in sockets:
            seqs = [(await ws.recv_type("new_message"))["message"]["seq"] for _ in sent]
            assert seqs == [m["seq"] for m in sent]


async def test_three_processes_deliver_in_order_and_a_dead_ones_users_go_offline(pg_url: str) -> None:
    alice, bob, carol = uid(), uid(), uid()
    room = uid("s")
    async with AsyncExitStack() as servers:
        a, b = [await servers.enter_async_context(serve_process(pg_url, **BUS)) for _ in range(2)]
        async with serve_process(pg_url, **BUS) as c, AsyncExitStack() as stack:
            await post(a, alice, "/sessions", {"session_id": room, "members": [bob, carol], "ai_enabled": False})
            conn = await stack.enter_async_context(connect(f"{b.ws_url}/ws?token={token(bob)}"))
            watcher = WsClient(conn, presence=True)
            await socket_to(c, carol, stack)  # carol is online on c alone
            assert await watcher.recv() == {"type": "presence", "user_id": carol, "online": True}

            async def sender(server: ServerProcess, user: str) -> None:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                    for n in range(10):
                        body = {"session_id": room, "content": f"{user} {n}"}
                        r = await client.post("/message/send", json=body, headers=auth(user))
                        assert r.status_code == 201, r.text

            await asyncio.gather(sender(a, alice), sender(c, carol))  # a and c store into one session at once
            seqs = [(await watcher.recv_type("new_message"))["message"]["seq"] for _ in range(20)]
            assert seqs == list(range(1, 21))
            c.proc.send_signal(signal.SIGKILL)  # carol's only process dies with her socket
            await c.proc.wait()
            gone = await watcher.recv_type("presence", timeout=15)
            assert gone == {"type": "presence", "user_id": carol, "online": False}
