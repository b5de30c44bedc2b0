"""Benchmark: from the model's first token to the first `ai_reply_delta` on a member's socket.

    make bench            (or: .venv/bin/python -m tests.bench.first_delta --runs 5 --replies 40)

A real `imsvc serve` process, the local OpenAI-compatible fake model (in this process, reached through
the real SDK over HTTP) and a WebSocket client (in this process). The fake stamps each stream's first
content chunk with CLOCK_MONOTONIC as it writes it; the client stamps the first delta as it reads it;
the same clock serves both processes. Also reported: send_message → message_sent (stored, then acked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time

import httpx
from websockets.asyncio.client import connect

from tests.fakellm import start_fake_llm
from tests.helpers import auth, serve_process, token

USER = "bench_user"


async def one_run(database_url: str, replies: int, mode: str) -> tuple[list[float], list[float]]:
    """(first-delta latencies, ack latencies) in milliseconds."""
    async with start_fake_llm() as fake:
        fake.mode = mode
        ai = {"AI_PROVIDER": "openai", "AI_API_KEY": "k", "AI_BASE_URL": fake.url, "RATE_LIMIT_MESSAGES": "0"}
        async with serve_process(database_url, **ai) as server:
            room = f"bench{time.monotonic_ns()}"
            async with httpx.AsyncClient(base_url=server.url) as client:
                r = await client.post("/sessions", json={"session_id": room}, headers=auth(USER))
                r.raise_for_status()
            first_delta: list[float] = []
            acks: list[float] = []
            async with connect(f"{server.ws_url}/ws?token={token(USER)}") as ws:
                for i in range(replies):
                    sent_at = time.monotonic_ns()
                    await ws.send(json.dumps({"type": "send_message", "session_id": room, "content": f"q{i}"}))
                    delta_at = None
                    while True:
                        frame = json.loads(await ws.recv())
                        now = time.monotonic_ns()
                        if frame["type"] == "message_sent":
                            acks.append((now - sent_at) / 1e6)
                        elif frame["type"] == "ai_reply_delta" and delta_at is None:
                            delta_at = now
                        elif frame["type"] in ("ai_reply", "ai_reply_error"):
                            break
                    assert delta_at is not None and len(fake.first_token_ns) == i + 1
                    first_delta.append((delta_at - fake.first_token_ns[i]) / 1e6)
            return first_delta, acks


def describe(name: str, runs: list[list[float]]) -> None:
    medians = [statistics.median(r) for r in runs]
    everything = sorted(x for r in runs for x in r)
    p90 = everything[int(len(everything) * 0.9)]
    print(
        f"{name}: median {statistics.median(everything):.2f} ms, p90 {p90:.2f} ms; "
        f"per-run medians {', '.join(f'{m:.2f}' for m in medians)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--replies", type=int, default=40)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file per run")
    parser.add_argument("--mode", default="slow", help="fake model mode: slow = 50 ms between tokens, as a model")
    args = parser.parse_args()
    deltas, acks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench{run}.db"
            if args.database_url is None:
                from imsvc.db import migrate

                await asyncio.to_thread(migrate, url)
            d, a = await one_run(url, args.replies, args.mode)
            deltas.append(d)
            acks.append(a)
    print(f"{args.runs} runs x {args.replies} replies, fake model mode {args.mode!r}, {os.cpu_count()} CPUs")
    describe("model's first token -> first ai_reply_delta on the socket", deltas)
    describe("send_message -> message_sent", acks)


if __name__ == "__main__":
    asyncio.run(main())
