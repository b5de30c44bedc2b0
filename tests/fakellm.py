"""A local OpenAI-compatible model server for the tests: real HTTP, real SSE, scripted failures.

    async with start_fake_llm() as fake:    # or the `fake_llm` fixture
        fake.mode = "429_once"
        ... Settings(ai_base_url=fake.url, ...) ...
        await fake.wait_for_requests(2)

Modes (settable at any time; read when a request arrives; setting a *_once mode re-arms it):
    normal    `reply` one word per chunk, no delay
    slow      the same, 50 ms between chunks
    long      200 chunks, 20 ms apart
    429_once  the first request in this mode gets 429 (Retry-After: 0), later ones are normal;
              the SDK takes 0 as no hint and backs off its own 0.4-0.5 s
    500       every request gets 500 before any token
    500_once  the first request in this mode gets 500, later ones are normal
    cut       a few chunks, then the connection drops without [DONE]
    hang      the role chunk and one word, then nothing until `release` is set (then the rest;
              `release` stays set until a test clears it)
    length    like normal, but finish_reason "length"
    malformed a few chunks, then an event whose data is not JSON
    no_finish like normal, but no chunk carries a finish_reason (as some compatible servers do)
    short     a few chunks, then the body ends cleanly: no finish_reason, no [DONE] (a proxy that gave up)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.helpers import serve_app

MODES = (
    "normal",
    "slow",
    "long",
    "429_once",
    "500",
    "500_once",
    "cut",
    "hang",
    "length",
    "malformed",
    "no_finish",
    "short",
)
REPLY = "Hello there, this is the fake model speaking."
CUT_AFTER = 3
LONG_PIECES = 200


class StreamCut(Exception):
    """Raised inside the response body: uvicorn then drops the connection mid-stream."""


class FakeLLM:
    def __init__(self) -> None:
        self.url = ""
        self.reply = REPLY
        self.requests: list[dict[str, Any]] = []
        self.open_streams = 0  # responses still streaming; back to 0 once a client has hung up
        self.first_token_ns: list[int] = []  # time.monotonic_ns() as each stream's first content chunk goes out
        self.release = asyncio.Event()
        self._mode = "normal"
        self._armed = False  # whether a *_once mode still has its failure to give
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown fake model mode {mode!r}")
        self._mode = mode
        self._armed = mode.endswith("_once")

    def text(self, mode: str | None = None) -> str:
        """The whole text a complete stream carries in `mode` (the current one by default)."""
        return "".join(self._pieces(mode or self._mode))

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5) -> None:
        """Wait until `predicate()` holds; it is checked whenever a request arrives or a stream ends."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_for_requests(self, n: int, timeout: float = 5) -> None:
        await self.wait_until(lambda: len(self.requests) >= n, timeout)

    def close_streams(self) -> None:
        """End every open stream now, as a cut: at shutdown, so that nothing hangs."""
        self._closing.set()
        self.release.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but not past close_streams()."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _pieces(self, mode: str) -> list[str]:
        if mode == "long":
            return [f"w{i} " for i in range(LONG_PIECES)]
        words = self.reply.split(" ")
        return [w + " " for w in words[:-1]] + [words[-1]]

    async def _completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self._notify()
        mode = self._mode
        if mode == "500" or (mode in ("429_once", "500_once") and self._armed):
            self._armed = False
            return _error(429, {"Retry-After": "0"}) if mode == "429_once" else _error(500, {})
        return StreamingResponse(self._events(mode, body), media_type="text/event-stream")

    async def _events(self, mode: str, body: dict[str, Any]) -> AsyncIterator[str]:
        self.open_streams += 1
        try:
            chunk = _Chunks(str(body.get("model", "fake")))
            pieces = self._pieces(mode)
            delay = {"slow": 0.05, "long": 0.02}.get(mode, 0.0)
            yield chunk.delta({"role": "assistant", "content": ""})
            for i, piece in enumerate(pieces):
                if mode == "cut" and i == CUT_AFTER:
                    raise StreamCut("fake model server cut the stream (on purpose)")
                if mode == "malformed" and i == CUT_AFTER:
                    yield 'data: {"id": "chatcmpl-fake", "choices": [\n\n'
                    return
                if mode == "short" and i == CUT_AFTER:
                    return
                if mode == "hang" and i == 1:
                    await self.release.wait()  # close_streams() sets it too
                if delay:
                    await self._pause(delay)
                if self._closing.is_set():
                    raise StreamCut("fake model server shutting down")
                if i == 0:
                    self.first_token_ns.append(time.monotonic_ns())
                yield chunk.delta({"content": piece})
            if mode != "no_finish":
                yield chunk.finish("length" if mode == "length" else "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt = 1 + sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
                yield chunk.usage(prompt, len(pieces))
            yield "data: [DONE]\n\n"
        finally:
            self.open_streams -= 1
            self._notify()


class _Chunks:
    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-fake{time.monotonic_ns()}"
        self.created = int(time.time())
        self.model = model

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        data = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n"

    def delta(self, delta: dict[str, str]) -> str:
        return self._event([{"index": 0, "delta": delta, "finish_reason": None}])

    def finish(self, reason: str) -> str:
        return self._event([{"index": 0, "delta": {}, "finish_reason": reason}])

    def usage(self, prompt: int, completion: int) -> str:
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return self._event([], usage=usage)


def _error(status: int, headers: dict[str, str]) -> JSONResponse:
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    body = {"error": {"message": f"fake {kind}", "type": kind, "param": None, "code": kind}}
    return JSONResponse(body, status_code=status, headers=headers)


@contextlib.asynccontextmanager
async def start_fake_llm() -> AsyncIterator[FakeLLM]:
    fake = FakeLLM()
    async with serve_app(fake.app, http="h11", lifespan="off", timeout_graceful_shutdown=1) as (address, _):
        fake.url = f"http://{address}/v1"
        try:
            yield fake
        finally:
            fake.close_streams()  # before the server stops, so that no stream holds it up


@pytest_asyncio.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    async with start_fake_llm() as fake:
        yield fake
