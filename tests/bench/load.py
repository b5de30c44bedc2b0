"""A load-client process of the bench: one role's virtual users, one connection each.

    python -m tests.bench.load ROLE --json-args '{"url": ..., "ws_url": ..., "secret": ..., ...}'

Started by `python -m tests.bench` (the harness), never by hand. It speaks JSON lines: it prints
{"phase": NAME, ...} when it reaches a phase and, at a barrier, waits for one JSON line on stdin
(the release). Closed-loop roles set up, print "ready", get {"t0": ns, "t1": ns} and count what
completes between t0 and t1 (CLOCK_MONOTONIC, which every process of the machine shares, so the
harness and several load processes agree on the window). Every role ends by printing
{"phase": "result", ...}: its raw samples, its errors and its CPU seconds in the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from imsvc.auth import mint_token
from tests.bench.rawhttp import KeepAlive
from tests.bench.rawws import RawSocket, open_socket

WAIT = 10.0  # one request or frame; past it the client counts a timeout and stops
AI_WAIT = 60.0  # one whole reply
SETUP_CONCURRENCY = 20
TOKEN_TTL = 6 * 3600

S = TypeVar("S")


def now() -> int:
    return time.monotonic_ns()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sleep_until(ns: int) -> None:
    await asyncio.sleep(max(0.0, (ns - now()) / 1e9))


class Control:
    """stdout for phases, stdin for releases."""

    def __init__(self) -> None:
        self._stdin: asyncio.StreamReader | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._stdin = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self._stdin), sys.stdin)  # type: ignore[arg-type]

    def report(self, phase: str, **info: Any) -> None:
        sys.stdout.write(json.dumps({"phase": phase, **info}) + "\n")
        sys.stdout.flush()

    async def barrier(self, phase: str, **info: Any) -> dict[str, Any]:
        self.report(phase, **info)
        assert self._stdin is not None
        line = await self._stdin.readline()
        if not line:
            raise SystemExit("the harness went away")
        release: dict[str, Any] = json.loads(line)
        return release


@dataclass
class Window:
    """The measured window [t0, t1] and what completed in it."""

    t0: int
    t1: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0

    def inside(self, ns: int) -> bool:
        return self.t0 <= ns <= self.t1

    def add(self, started: int, done: int) -> bool:
        """Count one completed operation if it completed in the window; whether it did."""
        if not self.inside(done):
            return False
        self.latencies_ms.append(round((done - started) / 1e6, 4))
        return True

    async def measure_cpu(self) -> None:
        await sleep_until(self.t0)
        start = cpu()
        await sleep_until(self.t1)
        self.cpu_s = cpu() - start

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"latencies_ms": self.latencies_ms, "errors": dict(self.errors), "cpu_s": self.cpu_s, **extra}


class Users:
    """Tokens, the setup REST client, and WebSocket connections, for the process's args."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.url: str = args["url"]
        self.ws_url: str = args["ws_url"]
        self.secret: str = args["secret"]
        self.source: str | None = args.get("source_address")
        self.setup = asyncio.Semaphore(SETUP_CONCURRENCY)

    def token(self, user: str) -> str:
        return mint_token(self.secret, user, TOKEN_TTL)

    async def create_session(self, http: httpx.AsyncClient, owner: str, session_id: str, ai: bool) -> None:
        async with self.setup:
            r = await http.post(
                "/sessions",
                json={"session_id": session_id, "ai_enabled": ai},
                headers={"Authorization": f"Bearer {self.token(owner)}"},
            )
        if r.status_code != 201:
            raise RuntimeError(f"POST /sessions: {r.status_code} {r.text}")

    async def sessions(self, users: list[str], ai: bool) -> None:
        """Each user's own session (named like the user), created over REST."""
        async with httpx.AsyncClient(base_url=self.url, timeout=WAIT) as http:
            await asyncio.gather(*(self.create_session(http, u, u, ai) for u in users))

    async def socket(self, user: str, handshakes_ms: list[float] | None = None) -> ClientConnection:
        """A socket of `user` (a few handshakes at a time); its handshake time added to `handshakes_ms`."""
        extra: dict[str, Any] = {"local_addr": (self.source, 0)} if self.source else {}
        uri = f"{self.ws_url}/ws?token={self.token(user)}"
        async with self.setup:
            started = now()
            conn = await connect(uri, max_size=None, open_timeout=30, **extra)
        if handshakes_ms is not None:
            handshakes_ms.append(round((now() - started) / 1e6, 3))
        return conn

    async def sockets(self, users: list[str]) -> list[ClientConnection]:
        return list(await asyncio.gather(*(self.socket(u) for u in users)))


async def recv(conn: ClientConnection, timeout: float = WAIT) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        frame: dict[str, Any] = json.loads(await conn.recv())
    return frame


def failure(exc: BaseException) -> str:
    """A short name for what stopped a client."""
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd else None
        return f"ws_closed:{code}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


async def run_clients(window: Window, clients: list[Awaitable[None]]) -> None:
    """Run closed-loop clients to the end of the window; a client that fails is counted and stops."""
    cpu_task = asyncio.create_task(window.measure_cpu())
    for outcome in await asyncio.gather(*clients, return_exceptions=True):
        if isinstance(outcome, BaseException):
            window.errors[failure(outcome)] += 1
    await cpu_task


async def closed_loop(
    control: Control, setup: Callable[[], Awaitable[S]], clients: Callable[[S, Window], list[Awaitable[None]]]
) -> tuple[S, Window]:
    """Set up, report ready, run the clients in the window the harness gives; (what setup made, the window)."""
    state = await setup()
    release = await control.barrier("ready")
    window = Window(release["t0"], release["t1"])
    await run_clients(window, clients(state, window))
    return state, window


# --- roles ------------------------------------------------------------------------------------


async def ws_send(control: Control, args: dict[str, Any]) -> dict[str, Any]:
    """Each user sends to its own session and waits for `message_sent` before the next."""
    users = Users(args)
    names: list[str] = args["users"]

    async def setup() -> list[ClientConnection]:
        await users.sessions(names, ai=False)
        return await users.sockets(names)

    async def one(conn: ClientConnection, session_id: str, window: Window) -> None:
        n = 0
        while now() < window.t1:
            n += 1
            ref = str(n)
            started = now()
            await conn.send(json.dumps({"type": "send_message", "id": ref, "session_id": session_id, "content": ref}))
            frame = await recv(conn)
            while frame.get("ref") != ref:
                frame = await recv(conn)
            if frame["type"] != "message_sent":
                window.errors[f"error_frame:{frame.get('code')}"] += 1
                continue
            window.add(started, now())

    conns, window = await closed_loop(
        control, setup, lambda conns, w: [one(c, s, w) for c, s in zip(conns, names, strict=True)]
    )
    await asyncio.gather(*(conn.close() for conn in conns))
    return window.result()


async def rest_send(control: Control, args: dict[str, Any]) -> dict[str, Any]:
    """Each user POSTs /message/send to its own session on its own keep-alive connection."""
    users = Users(args)
    names: list[str] = args["users"]

    async def setup() -> list[KeepAlive]:
        await users.sessions(names, ai=False)
        conns = [KeepAlive(users.url, users.token(u)) for u in names]
        await asyncio.gather(*(c.open() for c in conns))
        return conns

    async def one(conn: KeepAlive, session_id: str, window: Window) -> None:
        n = 0
        while now() < window.t1:
            n += 1
            body = json.dumps({"session_id": session_id, "content": f"m{n}"}).encode()
            started = now()
            async with asyncio.timeout(WAIT):
                status, _ = await conn.request("POST", "/message/send", body)
            if status != 201:
                window.errors[f"http_{status}"] += 1
                continue
            window.add(started, now())

    conns, window = await closed_loop(
        control, setup, lambda conns, w: [one(c, s, w) for c, s in zip(conns, names, strict=True)]
    )
    await asyncio.gather(*(conn.close() for conn in conns))
    return window.result()


async def history(control: Control, args: dict[str, Any]) -> dict[str, Any]:
    """Keyset pages at depths spread over each seeded session, round robin over sessions and depths.

    Depth bucket b of B holds the pages whose before_seq lies in the b-th B-th of the session
    counted from its newest end: bucket 0 the newest pages, bucket B-1 the oldest.
    """
    users = Users(args)
    sessions: dict[str, int] = args["sessions"]  # session_id -> number of messages
    buckets: int = args["buckets"]
    limit: int = args["limit"]
    rng = random.Random(1)
    samples: list[list[Any]] = []  # [session_id, bucket, latency_ms]

    async def setup() -> KeepAlive:
        conn = KeepAlive(users.url, users.token(args["reader"]))
        await conn.open()
        return conn

    def before_seq(size: int, bucket: int) -> int:
        # Newest page: before_seq = size + 1; oldest full page: before_seq = limit + 1.
        span = (size - limit) / buckets
        high = size + 1 - round(bucket * span)
        low = max(limit + 1, size + 1 - round((bucket + 1) * span))
        return rng.randint(low, max(low, high))

    async def reader(conn: KeepAlive, window: Window) -> None:
        plan = [(s, b) for s in sessions for b in range(buckets)]
        i = 0
        while now() < window.t1:
            session_id, bucket = plan[i % len(plan)]
            i += 1
            seq = before_seq(sessions[session_id], bucket)
            started = now()
            async with asyncio.timeout(WAIT):
                status, body = await conn.request(
                    "GET", f"/message/list?session_id={session_id}&before_seq={seq}&limit={limit}"
                )
            done = now()
            if status != 200:
                window.errors[f"http_{status}"] += 1
                continue
            page = json.loads(body)["messages"]
            if len(page) != min(limit, seq - 1) or page[0]["seq"] != seq - 1:
                window.errors["wrong_page"] += 1
            if window.add(started, done):
                samples.append([session_id, bucket, window.latencies_ms[-1]])

    conn, window = await closed_loop(control, setup, lambda conn, w: [reader(conn, w)])
    await conn.close()
    return window.result(samples=samples)


async def ai_exchange(
    conn: ClientConnection, session_id: str, ref: str, window: Window | None = None
) -> dict[str, Any]:
    """Send one message and read until its reply ends; the stamps and frames of the exchange.

    A token is one chunk of the fake model: a word and its space, the last word without. So the
    tokens a delta delivers are its spaces (deltas merged by the server still count right), and the
    final `ai_reply` delivers the last one. `window_tokens` counts those that arrive in the window.
    """
    started = now()
    await conn.send(json.dumps({"type": "send_message", "id": ref, "session_id": session_id, "content": f"q{ref}"}))
    out: dict[str, Any] = {"started": started, "ack": None, "first_delta": None, "deltas": 0, "error": None}
    out["window_tokens"] = 0
    user_message_id = None
    async with asyncio.timeout(AI_WAIT):
        while True:
            frame = json.loads(await conn.recv())
            kind = frame["type"]
            if kind == "message_sent" and frame.get("ref") == ref:
                out["ack"] = now()
                user_message_id = frame["message_id"]
            elif kind == "error" and frame.get("ref") == ref:
                out["error"] = f"error_frame:{frame.get('code')}"
                break
            elif kind == "ai_reply_delta":
                stamp = now()
                if out["first_delta"] is None:
                    out["first_delta"] = stamp
                out["deltas"] += 1
                if window is not None and window.inside(stamp):
                    out["window_tokens"] += frame["delta"].count(" ")
            elif kind in ("ai_reply", "ai_reply_error") and frame.get("user_message_id") == user_message_id:
                if window is not None and window.inside(now()) and kind == "ai_reply":
                    out["window_tokens"] += 1
                if kind == "ai_reply_error":
                    out["error"] = f"ai_reply_error:{frame['error']['code']}"
                elif frame.get("finish_reason") != "stop":
                    out["error"] = f"finish_reason:{frame.get('finish_reason')}"
                out["content"] = frame.get("content") or ""
                break
    out["done"] = now()
    return out


async def ai_relay(control: Control, args: dict[str, Any]) -> dict[str, Any]:
    """Each user sends to its own AI session and waits for the final `ai_reply` before the next."""
    users = Users(args)
    names: list[str] = args["users"]
    expect: int = args["tokens"]
    totals: Counter[str] = Counter()

    async def setup() -> list[ClientConnection]:
        await users.sessions(names, ai=True)
        return await users.sockets(names)

    async def one(conn: ClientConnection, session_id: str, window: Window) -> None:
        n = 0
        while now() < window.t1:
            n += 1
            ex = await ai_exchange(conn, session_id, str(n), window)
            totals["tokens"] += ex["window_tokens"]
            if ex["error"]:
                window.errors[ex["error"]] += 1
                continue
            if len(ex["content"].split()) != expect:
                window.errors["short_reply"] += 1
            if window.add(ex["started"], ex["done"]):
                totals.update(replies=1, delta_frames=ex["deltas"])

    conns, window = await closed_loop(
        control, setup, lambda conns, w: [one(c, s, w) for c, s in zip(conns, names, strict=True)]
    )
    await asyncio.gather(*(conn.close() for conn in conns))
    return window.result(**totals)


async def first_delta(control: Control, args: dict[str, Any]) -> dict[str, Any]:
    """One socket, one reply at a time: message_sent -> first ai_reply_delta, and the stamps of every reply."""
    users = Users(args)
    user: str = args["users"][0]
    replies: list[dict[str, Any]] = []  # every exchange of the run, warm-up included, in order

    async def setup() -> ClientConnection:
        await users.sessions([user], ai=True)
        return await users.socket(user)

    async def one(conn: ClientConnection, window: Window) -> None:
        n = 0
        while now() < window.t1:
            n += 1
            ex = await ai_exchange(conn, user, str(n))
            replies.append({k: ex[k] for k in ("started", "ack", "first_delta", "done")})
            if ex["error"] or ex["ack"] is None or ex["first_delta"] is None:
                window.errors[ex["error"] or "no_ack_or_delta"] += 1
                continue
            if ex["first_delta"] < ex["ack"]:
                window.errors["delta_before_ack"] += 1
            if window.inside(ex["done"]):
                window.latencies_ms.append(round((ex["first_delta"] - ex["ack"]) / 1e6, 4))
                replies[-1]["in_window"] = True

    conn, window = await closed_loop(control, setup, lambda conn, w: [one(conn, w)])
    await conn.close()
    return window.result(replies=replies)


async def fanout_sender(control: Control, args: dict[str, Any]) -> dict[str, Any]:
    """The owner of the fan-out session: `count` messages, each sent once the previous one is acked."""
    users = Users(args)
    conn = await users.socket(args["user"])
    release = await control.barrier("ready")
    await sleep_until(release["t0"])
    start_cpu = cpu()
    sent: list[list[int]] = []  # [index, seq, send_ns]
    errors: Counter[str] = Counter()
    try:
        for i in range(args["count"]):
            ref = str(i)
            started = now()
            frame = {"type": "send_message", "id": ref, "session_id": args["session_id"], "content": f"fan {i}"}
            await conn.send(json.dumps(frame))
            answer = await recv(conn)
            while answer.get("ref") != ref:
                answer = await recv(conn)
            if answer["type"] != "message_sent":
                errors[f"error_frame:{answer.get('code')}"] += 1
                continue
            sent.append([i, answer["message"]["seq"], started])
    except (ConnectionClosed, TimeoutError) as exc:
        errors[failure(exc)] += 1
    cpu_s = cpu() - start_cpu
    await control.barrier("done")  # the harness reads the server's CPU before the sockets close
    await conn.close()
    return {"sent": sent, "errors": dict(errors), "cpu_s": cpu_s}


async def fanout_receivers(control: Control, args: dict[str, Any]) -> dict[str, Any]:
    """Members' sockets (the lean client of rawws), each reading until it has every one of the sender's
    messages (or the deadline)."""
    users = Users(args)
    count: int = args["count"]
    received: list[list[list[int]]] = [[] for _ in args["users"]]  # per socket: [index, seq, recv_ns]
    complete = [asyncio.get_running_loop().create_future() for _ in args["users"]]

    def reader(got: list[list[int]], done: asyncio.Future[None]) -> Callable[[bytes], None]:
        def on_text(payload: bytes) -> None:
            stamp = now()
            frame = json.loads(payload)
            if frame["type"] == "new_message" and frame["message"]["msg_content"].startswith("fan "):
                got.append([int(frame["message"]["msg_content"][4:]), frame["message"]["seq"], stamp])
                if len(got) == count and not done.done():
                    done.set_result(None)

        return on_text

    parts = urlsplit(users.ws_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def open_one(user: str, index: int) -> RawSocket:
        async with users.setup:
            return await open_socket(
                host, port, f"/ws?token={users.token(user)}", reader(received[index], complete[index])
            )

    conns = await asyncio.gather(*(open_one(u, i) for i, u in enumerate(args["users"])))
    release = await control.barrier("ready")
    deadline = release["t0"] + int(args["timeout_s"] * 1e9)
    start_cpu = cpu()
    errors: Counter[str] = Counter()
    waits = [asyncio.ensure_future(asyncio.shield(done)) for done in complete]
    _, pending = await asyncio.wait(waits, timeout=max(0.0, (deadline - now()) / 1e9))
    errors.update({"TimeoutError": len(pending)} if pending else {})
    for wait in pending:
        wait.cancel()
    cpu_s = cpu() - start_cpu
    await control.barrier("done")
    for conn in conns:
        conn.close()
    return {"received": received, "errors": dict(errors), "cpu_s": cpu_s}


async def idle(control: Control, args: dict[str, Any]) -> dict[str, Any]:
    """Open `count` sockets and keep them idle; then check each still answers a ping frame."""
    users = Users(args)
    names = [f"{args['prefix']}{i}" for i in range(args["count"])]
    errors: Counter[str] = Counter()
    connect_ms: list[float] = []

    async def open_one(user: str) -> ClientConnection | None:
        try:
            return await users.socket(user, connect_ms)
        except (OSError, TimeoutError, InvalidStatus) as exc:
            errors[f"connect:{type(exc).__name__}"] += 1
            return None

    async def check(conn: ClientConnection) -> bool:
        try:
            await conn.send(json.dumps({"type": "ping", "id": "p"}))
            while (await recv(conn, 30)).get("ref") != "p":
                pass
            return True
        except (ConnectionClosed, TimeoutError) as exc:
            errors[f"check:{failure(exc)}"] += 1
            return False

    await control.barrier("ready")
    start_cpu = cpu()
    opened = [c for c in await asyncio.gather(*(open_one(u) for u in names)) if c is not None]
    await control.barrier("connected", opened=len(opened))
    held = sum(await asyncio.gather(*(check(c) for c in opened)))
    await control.barrier("held", held=held)
    cpu_s = cpu() - start_cpu
    await asyncio.gather(*(c.close() for c in opened))
    return {"opened": len(opened), "held": held, "latencies_ms": connect_ms, "errors": dict(errors), "cpu_s": cpu_s}


ROLES: dict[str, Callable[[Control, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "ws_send": ws_send,
    "rest_send": rest_send,
    "history": history,
    "ai_relay": ai_relay,
    "first_delta": first_delta,
    "fanout_sender": fanout_sender,
    "fanout_receivers": fanout_receivers,
    "idle": idle,
}


async def main(role: str, args: dict[str, Any]) -> None:
    control = Control()
    await control.open()
    result = await ROLES[role](control, args)
    control.report("result", **result)


def run() -> None:
    parser = argparse.ArgumentParser(description="a load-client process of python -m tests.bench")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--json-args", required=True)
    options = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per socket
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it on Linux; elsewhere the default loop does
        asyncio.run(main(options.role, json.loads(options.json_args)))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(options.role, json.loads(options.json_args)))


if __name__ == "__main__":
    run()
