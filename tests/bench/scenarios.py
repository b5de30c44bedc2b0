"""The scenarios: what each run sets up, which load processes it starts, and its figures."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.bench.procs import Server, load_group
from tests.bench.seed import seed_history
from tests.bench.stats import latency_fields, percentile, rnd
from tests.fakellm import FakeLLM
from tests.helpers import SECRET, auth

READY_TIMEOUT = 180.0  # setting up: sessions, members, thousands of sockets
RESULT_GRACE = 90.0  # after the window: the last replies, the last deliveries, closing
MEMBERS_PER_BODY = 100  # POST /sessions takes at most 100 `members`


@dataclass
class Sizes:
    ws_small: int = 25
    ws_large: int = 200
    ws_procs: int = 1
    rest: int = 50
    history: tuple[int, ...] = (20_000, 200_000)
    history_buckets: int = 10
    ai_sockets: int = 100
    ai_tokens: int = 200
    fanout: int = 1000
    fanout_messages: int = 100
    fanout_procs: int = 2  # one per core: more only adds switching between them
    fanout_timeout_s: float = 60.0
    idle: int = 10_000
    idle_procs: int = 4


SMOKE = Sizes(
    ws_small=2,
    ws_large=5,
    rest=3,
    history=(200,),
    history_buckets=4,
    ai_sockets=3,
    ai_tokens=20,
    fanout=20,
    fanout_messages=10,
    fanout_procs=2,
    fanout_timeout_s=20.0,
    idle=50,
    idle_procs=2,
)


@dataclass
class Bench:
    """What every scenario of one harness invocation shares."""

    database_url: str
    fake: FakeLLM
    sizes: Sizes
    seconds: float
    warmup: float
    tag: str  # random: keeps the ids of one invocation apart from another's
    seeded: dict[str, int] = field(default_factory=dict)  # history session id -> messages

    def args(self, server: Server, **extra: Any) -> dict[str, Any]:
        return {"url": server.url, "ws_url": server.ws_url, "secret": SECRET, **extra}

    def users(self, prefix: str, run: int, count: int) -> list[str]:
        return [f"{prefix}_{self.tag}_r{run}_u{i}" for i in range(count)]


def now() -> int:
    return time.monotonic_ns()


async def sleep_until(ns: int) -> None:
    await asyncio.sleep(max(0.0, (ns - now()) / 1e9))


def split(items: list[str], parts: int) -> list[list[str]]:
    return [chunk for chunk in (items[i::parts] for i in range(parts)) if chunk]


async def closed_loop(bench: Bench, server: Server, role: str, per_process: list[dict[str, Any]]) -> dict[str, Any]:
    """Start the load processes; once all are ready, the window: warm-up, then `seconds` measured."""
    async with load_group([(role, bench.args(server, **a)) for a in per_process]) as group:
        await group.barrier("ready", READY_TIMEOUT)
        t0 = now() + int(bench.warmup * 1e9)
        t1 = t0 + int(bench.seconds * 1e9)
        group.release({"t0": t0, "t1": t1})
        await sleep_until(t0)
        server_cpu, model_cpu = server.cpu(), time.process_time()
        await sleep_until(t1)
        server_cpu, model_cpu = server.cpu() - server_cpu, time.process_time() - model_cpu
        results = await group.barrier("result", RESULT_GRACE)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "results": results,
        "latencies": [x for r in results for x in r["latencies_ms"]],
        "window_s": bench.seconds,
        "server_cpu_s": rnd(server_cpu),
        "model_cpu_s": rnd(model_cpu),  # this process: the fake model's streams, mostly
        "load_cpu_s": rnd(sum(r["cpu_s"] for r in results)),
        "errors": errors,
    }


def per_op_ms(server_cpu_s: float, ops: float) -> float | None:
    """The server's CPU milliseconds per unit of throughput: steadier than throughput on a shared machine."""
    return rnd(server_cpu_s * 1000 / ops, 4) if ops else None


def run_fields(measured: dict[str, Any], throughput: float, unit: str, latencies: list[float]) -> dict[str, Any]:
    return {
        "throughput": rnd(throughput, 1),
        "unit": unit,
        **latency_fields(latencies),
        "window_s": measured["window_s"],
        "server_cpu_s": measured["server_cpu_s"],
        "server_cpu_ms_per_op": per_op_ms(measured["server_cpu_s"], throughput * measured["window_s"]),
        "load_cpu_s": measured["load_cpu_s"],
        "errors": measured["errors"],
    }


# --- closed-loop sends -----------------------------------------------------------------------


def sends(name: str, role: str, clients: Callable[[Sizes], int], procs: Callable[[Sizes], int]) -> RunFn:
    async def run(bench: Bench, server: Server, index: int) -> dict[str, Any]:
        users = bench.users(name, index, clients(bench.sizes))
        measured = await closed_loop(bench, server, role, [{"users": u} for u in split(users, procs(bench.sizes))])
        latencies = measured["latencies"]
        return {**run_fields(measured, len(latencies) / bench.seconds, "msgs/s", latencies), "clients": len(users)}

    return run


# --- history ---------------------------------------------------------------------------------


async def prepare_history(bench: Bench) -> None:
    for size in bench.sizes.history:
        session_id = f"history_{bench.tag}_{size}"
        if session_id not in bench.seeded:
            await seed_history(bench.database_url, session_id, f"history_{bench.tag}_reader", size)
            bench.seeded[session_id] = size


async def history(bench: Bench, server: Server, index: int) -> dict[str, Any]:
    await prepare_history(bench)
    buckets = bench.sizes.history_buckets
    args = {"reader": f"history_{bench.tag}_reader", "sessions": bench.seeded, "buckets": buckets, "limit": 50}
    measured = await closed_loop(bench, server, "history", [args])
    samples = measured["results"][0]["samples"]
    by_size: dict[str, Any] = {}
    for session_id, size in bench.seeded.items():
        table = {}
        for b in range(buckets):
            values = [s[2] for s in samples if s[0] == session_id and s[1] == b]
            table[f"{b * 100 // buckets}-{(b + 1) * 100 // buckets}%"] = {**latency_fields(values), "n": len(values)}
        worst = max((row["p99_ms"] for row in table.values() if row["p99_ms"] is not None), default=None)
        by_size[str(size)] = {"worst_p99_ms": worst, "depth_from_newest": table}
    latencies = measured["latencies"]
    worsts = [v["worst_p99_ms"] for v in by_size.values() if v["worst_p99_ms"] is not None]
    return {
        **run_fields(measured, len(latencies) / bench.seconds, "req/s", latencies),
        "clients": 1,
        "page": 50,
        "worst_p99_ms": max(worsts, default=None),
        "by_size": by_size,
    }


# --- the assistant ---------------------------------------------------------------------------


async def ai_relay(bench: Bench, server: Server, index: int) -> dict[str, Any]:
    users = bench.users("ai_relay", index, bench.sizes.ai_sockets)
    measured = await closed_loop(bench, server, "ai_relay", [{"users": users, "tokens": bench.sizes.ai_tokens}])
    totals = {k: sum(r.get(k, 0) for r in measured["results"]) for k in ("replies", "tokens", "delta_frames")}
    return {
        **run_fields(measured, totals["tokens"] / bench.seconds, "tok/s", measured["latencies"]),
        "clients": len(users),
        "tokens_per_reply": bench.sizes.ai_tokens,
        "replies_per_s": rnd(totals["replies"] / bench.seconds, 1),
        "delta_frames_per_reply": rnd(totals["delta_frames"] / totals["replies"], 1) if totals["replies"] else None,
        "model_cpu_s": measured["model_cpu_s"],
    }


async def first_delta(bench: Bench, server: Server, index: int) -> dict[str, Any]:
    bench.fake.first_token_ns.clear()
    users = bench.users("first_delta", index, 1)
    measured = await closed_loop(bench, server, "first_delta", [{"users": users}])
    replies = measured["results"][0]["replies"]
    stamps = bench.fake.first_token_ns
    # One socket, one reply at a time: the i-th model stream is the i-th exchange.
    paired = len(stamps) == len(replies)
    if not paired:
        measured["errors"]["unpaired_model_streams"] = 1
    in_window = [r for r in replies if r.get("in_window")]
    token_to_delta = [
        (r["first_delta"] - t) / 1e6 for r, t in zip(replies, stamps, strict=False) if paired and r.get("in_window")
    ]
    acks = [(r["ack"] - r["started"]) / 1e6 for r in in_window]
    return {
        **run_fields(measured, len(in_window) / bench.seconds, "replies/s", measured["latencies"]),
        "clients": 1,
        "token_to_delta_p50_ms": rnd(percentile(token_to_delta, 50)),
        "ack_p50_ms": rnd(percentile(acks, 50)),
    }


# --- fan-out ---------------------------------------------------------------------------------


async def fanout_session(server: Server, owner: str, members: list[str], session_id: str) -> None:
    """One session of `owner` and `members`: the first hundred at creation, the others added one by one."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        first = members[:MEMBERS_PER_BODY]
        body = {"session_id": session_id, "members": first, "ai_enabled": False}
        r = await http.post("/sessions", json=body, headers=auth(owner))
        if r.status_code != 201:
            raise RuntimeError(f"POST /sessions: {r.status_code} {r.text}")
        gate = asyncio.Semaphore(10)

        async def add(user: str) -> None:
            async with gate:
                r = await http.post(f"/sessions/{session_id}/members", json={"user_id": user}, headers=auth(owner))
            if r.status_code != 201:
                raise RuntimeError(f"POST /sessions/{session_id}/members: {r.status_code} {r.text}")

        await asyncio.gather(*(add(u) for u in members[MEMBERS_PER_BODY:]))


async def fanout(bench: Bench, server: Server, index: int) -> dict[str, Any]:
    sizes = bench.sizes
    owner = f"fanout_{bench.tag}_r{index}_owner"
    members = bench.users("fanout", index, sizes.fanout)
    session_id = f"fanout_{bench.tag}_r{index}"
    await fanout_session(server, owner, members, session_id)
    count = sizes.fanout_messages
    common = {"session_id": session_id, "count": count}
    loads = [("fanout_sender", bench.args(server, user=owner, **common))]
    for part in split(members, sizes.fanout_procs):
        loads.append(("fanout_receivers", bench.args(server, users=part, timeout_s=sizes.fanout_timeout_s, **common)))
    async with load_group(loads) as group:
        await group.barrier("ready", READY_TIMEOUT)
        t0 = now() + 50_000_000
        group.release({"t0": t0})
        await sleep_until(t0)
        server_cpu = server.cpu()
        await group.barrier("done", sizes.fanout_timeout_s + RESULT_GRACE)
        server_cpu = server.cpu() - server_cpu
        group.release({})
        results = await group.barrier("result", RESULT_GRACE)
    sender, receivers = results[0], results[1:]
    sent = {i: (seq, ns) for i, seq, ns in sender["sent"]}
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    lags: list[float] = []
    frames = order_violations = duplicates = mismatched = last_delivery = 0
    sockets = [got for r in receivers for got in r["received"]]
    for got in sockets:
        frames += len(got)
        duplicates += len(got) - len({i for i, _, _ in got})
        order_violations += sum(1 for a, b in itertools.pairwise(got) if b[1] <= a[1])
        for i, seq, ns in got:
            if i not in sent or sent[i][0] != seq:
                mismatched += 1
                continue
            lags.append((ns - sent[i][1]) / 1e6)
            last_delivery = max(last_delivery, ns)
    if mismatched:
        errors["seq_not_as_acked"] = mismatched
    first_send = min((ns for _, ns in sent.values()), default=0)
    elapsed = (last_delivery - first_send) / 1e9 if lags else 0.0
    return {
        "throughput": rnd(len(lags) / elapsed, 1) if elapsed > 0 else 0.0,
        "unit": "frames/s",
        **latency_fields(lags),
        "window_s": rnd(elapsed),
        "server_cpu_s": rnd(server_cpu),
        "server_cpu_ms_per_op": per_op_ms(server_cpu, len(lags)),
        "load_cpu_s": rnd(sum(r["cpu_s"] for r in results)),
        "errors": errors,
        "sockets": len(sockets),
        "messages": len(sent),
        "frames": frames,
        "missing": len(sockets) * count - (frames - duplicates),
        "duplicates": duplicates,
        "order_violations": order_violations,
        "procs": len(receivers),
    }


# --- idle sockets ----------------------------------------------------------------------------


async def idle(bench: Bench, server: Server, index: int) -> dict[str, Any]:
    sizes = bench.sizes
    per = [len(part) for part in split([""] * sizes.idle, sizes.idle_procs)]
    # Each process from its own loopback address, so that no address runs out of ephemeral ports.
    loads = []
    for p, n in enumerate(per):
        prefix = f"idle_{bench.tag}_r{index}_p{p}_u"
        loads.append(("idle", bench.args(server, count=n, prefix=prefix, source_address=f"127.0.0.{p + 2}")))
    async with load_group(loads) as group:
        await group.barrier("ready", READY_TIMEOUT)
        rss_before, server_cpu = server.rss_kb(), server.cpu()
        started = now()
        group.release({})
        connected = await group.barrier("connected", READY_TIMEOUT)
        connect_s, connect_cpu = (now() - started) / 1e9, server.cpu() - server_cpu
        rss_connected = server.rss_kb()
        await asyncio.sleep(bench.seconds)  # the hold itself: the sockets sit idle for the window
        group.release({})
        held_reports = await group.barrier("held", READY_TIMEOUT)
        rss_held = server.rss_kb()
        server_cpu = server.cpu() - server_cpu
        group.release({})
        results = await group.barrier("result", RESULT_GRACE)
    opened = sum(c["opened"] for c in connected)
    held = sum(h["held"] for h in held_reports)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "throughput": rnd(opened / connect_s, 1),
        "unit": "connects/s",
        **latency_fields([x for r in results for x in r["latencies_ms"]]),
        "window_s": bench.seconds,
        "server_cpu_s": rnd(server_cpu),
        "server_cpu_ms_per_op": per_op_ms(connect_cpu, opened),  # the connecting only
        "load_cpu_s": rnd(sum(r["cpu_s"] for r in results)),
        "errors": errors,
        "sockets": sizes.idle,
        "connect_s": rnd(connect_s),
        "opened": opened,
        "held": held,
        "failed": sizes.idle - opened,
        "not_held": sizes.idle - held,
        "rss_before_mb": rnd(rss_before / 1024, 1),
        "rss_connected_mb": rnd(rss_connected / 1024, 1),
        "rss_held_mb": rnd(rss_held / 1024, 1),
        "rss_per_socket_kb": rnd((rss_held - rss_before) / max(held, 1), 1),
        "rss_per_socket_connected_kb": rnd((rss_connected - rss_before) / max(opened, 1), 1),
        "procs": len(loads),
    }


# --- the table -------------------------------------------------------------------------------

RunFn = Callable[[Bench, Server, int], Awaitable[dict[str, Any]]]


def med(line: dict[str, Any], key: str) -> float:
    value = line[key]["median"] if isinstance(line[key], dict) else line[key]
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class Scenario:
    name: str
    run: RunFn
    target: str
    meets: Callable[[dict[str, Any]], bool]
    figure: Callable[[dict[str, Any]], str]


def _send_figure(line: dict[str, Any]) -> str:
    return f"{med(line, 'throughput'):,.0f} msgs/s, p50 {med(line, 'p50_ms'):.1f} ms, p99 {med(line, 'p99_ms'):.1f} ms"


def _history_figure(line: dict[str, Any]) -> str:
    # The target is judged on the worst of both sizes in each run (median of runs); each size's own median follows.
    sizes = ", ".join(f"{int(size):,}: {v['worst_p99_ms']:.2f} ms" for size, v in line["by_size"].items())
    return (
        f"worst-depth p99 {line['worst_p99_ms']:.2f} ms ({sizes}); p50 {med(line, 'p50_ms'):.2f} ms; "
        f"{med(line, 'throughput'):,.0f} req/s"
    )


def _ai_figure(line: dict[str, Any]) -> str:
    return (
        f"{med(line, 'throughput'):,.0f} tok/s, {line['replies_per_s']:.1f} replies/s, "
        f"reply p50 {med(line, 'p50_ms'):,.0f} ms, p99 {med(line, 'p99_ms'):,.0f} ms"
    )


def _first_delta_figure(line: dict[str, Any]) -> str:
    return (
        f"median {med(line, 'p50_ms'):.2f} ms (p99 {med(line, 'p99_ms'):.2f} ms); "
        f"model's first token → delta {line['token_to_delta_p50_ms']:.2f} ms"
    )


def _fanout_figure(line: dict[str, Any]) -> str:
    return (
        f"{med(line, 'throughput'):,.0f} frames/s, lag p50 {med(line, 'p50_ms'):,.0f} ms, "
        f"p99 {med(line, 'p99_ms'):,.0f} ms; order violations {line['order_violations']}, missing {line['missing']}"
    )


def _idle_figure(line: dict[str, Any]) -> str:
    return (
        f"{line['held']:,.0f} of {line['sockets']:,} held, {line['rss_per_socket_kb']:.1f} KB each "
        f"({line['rss_per_socket_connected_kb']:.1f} KB before any frame)"
    )


SCENARIOS = [
    Scenario(
        "ws_send_25",
        sends("ws_send_25", "ws_send", lambda s: s.ws_small, lambda s: s.ws_procs),
        "≥ 2,800 msgs/s (10× the old peer's 280/s)",
        lambda line: med(line, "throughput") >= 2800,
        _send_figure,
    ),
    Scenario(
        "ws_send_200",
        sends("ws_send_200", "ws_send", lambda s: s.ws_large, lambda s: s.ws_procs),
        "≥ 3,000 msgs/s, p99 ≤ 150 ms",
        lambda line: med(line, "throughput") >= 3000 and med(line, "p99_ms") <= 150,
        _send_figure,
    ),
    Scenario(
        "rest_send_50",
        sends("rest_send_50", "rest_send", lambda s: s.rest, lambda s: 1),
        "≥ 1,000 msgs/s, p99 ≤ 150 ms",
        lambda line: med(line, "throughput") >= 1000 and med(line, "p99_ms") <= 150,
        _send_figure,
    ),
    Scenario(
        "history_keyset",
        history,
        "p99 ≤ 5 ms at every depth",
        lambda line: line["worst_p99_ms"] is not None and line["worst_p99_ms"] <= 5,
        _history_figure,
    ),
    Scenario(
        "ai_relay",
        ai_relay,
        "≥ 5,000 tok/s, ≥ 30 replies/s",
        lambda line: med(line, "throughput") >= 5000 and line["replies_per_s"] >= 30,
        _ai_figure,
    ),
    Scenario(
        "first_delta",
        first_delta,
        "median ≤ 10 ms",
        lambda line: med(line, "p50_ms") <= 10,
        _first_delta_figure,
    ),
    Scenario(
        "fanout_1000",
        fanout,
        "≥ 60,000 frames/s, in order, none missing",
        lambda line: med(line, "throughput") >= 60000 and line["order_violations"] == 0 and line["missing"] == 0,
        _fanout_figure,
    ),
    Scenario(
        "idle_sockets",
        idle,
        "10,000 held, ≤ 64 KB each",
        lambda line: line["not_held"] == 0 and line["rss_per_socket_kb"] <= 64,
        _idle_figure,
    ),
]
