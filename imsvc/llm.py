"""The model boundary: stream a chat reply as text deltas.

The only module that imports openai. Every provider but `echo` is reached through the SDK at its
OpenAI-compatible base URL; `echo` streams a deterministic reply offline.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx2
import openai

from imsvc.errors import ProviderError
from imsvc.settings import Settings

BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "anthropic": "https://api.anthropic.com/v1/",
    "ollama": "http://localhost:11434/v1",
}

# The SDK retries 408/409/429/5xx and connection errors with backoff, honouring Retry-After, and
# only while no response has been accepted: never once the stream has started (SPEC §9 Retries).
MAX_RETRIES = 2
CONNECT_TIMEOUT_S = 10.0

# Echo streams a word with its trailing whitespace per piece, or one CJK character (that script has
# no spaces); since the text starts with "Echo:", the pieces join back to it exactly.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
PIECE = re.compile(rf"[{_CJK}]\s*|[^\s{_CJK}]+\s*")


@dataclass
class Completion:
    """How a stream ended; filled in while it runs."""

    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


ChatMessages = list[dict[str, str]]
Request = dict[str, Any]


class ChatModel(Protocol):
    provider: str
    model: str

    def request(self, messages: ChatMessages, model: str | None = None) -> Request:
        """The Chat Completions request for `messages` (with `model`, or the configured one), built once:
        what is sent is what the record stores."""
        ...

    def stream(self, request: Request, result: Completion) -> AsyncGenerator[str, None]:
        """Send `request`; yield non-empty text deltas as they arrive and fill `result` by the end.

        Any failure of the model server raises ProviderError; cancellation passes through untouched.
        Close the generator (`contextlib.aclosing`) when leaving it early: that releases the request.
        """
        ...

    async def aclose(self) -> None: ...


class OpenAIModel:
    def __init__(self, settings: Settings) -> None:
        self.provider: str = settings.provider
        self.model = settings.ai_model
        self._temperature = settings.ai_temperature
        self._max_tokens = settings.ai_max_tokens
        # Ollama and self-hosted endpoints take no key (Settings checks the rest), but the SDK demands one.
        api_key = settings.ai_api_key or ("ollama" if self.provider == "ollama" else "none")
        self.base_url = settings.ai_base_url or BASE_URLS[self.provider]
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=self.base_url,
            max_retries=MAX_RETRIES,
            timeout=openai.Timeout(settings.ai_timeout_s, connect=CONNECT_TIMEOUT_S),
        )

    def request(self, messages: ChatMessages, model: str | None = None) -> Request:
        return {
            "model": model or self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self._max_tokens,
            "temperature": self._temperature,
        }

    async def stream(self, request: Request, result: Completion) -> AsyncGenerator[str, None]:
        # The SDK's own stream ends alike on `data: [DONE]` and on a body that merely stops, so a cut
        # stream would pass for a whole one: the SDK makes the request (auth, retries, errors) and the
        # events are read here, where [DONE] can be seen. The request is the JSON body as it is: it goes
        # through the client's generic `post` (the SDK README's way to any endpoint), which with
        # `cast_to=httpx2.Response` and stream=True hands back the response unread. `chat.completions.create`
        # would first run every message through the SDK's type-driven param transform, which changes nothing
        # in a plain chat request and cost 3-4 ms of CPU per request with a full context.
        done = False
        try:
            # typed as returning `stream_cls`, but with this cast_to the httpx2 response comes back as it is
            sent = self._client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body=request,
                options={"security": {"bearer_auth": True}},  # as `create` sends it: the API key, never the admin key
                stream=True,
                stream_cls=openai.AsyncStream[Any],
            )
            response = cast(httpx2.Response, await sent)
        except openai.OpenAIError as exc:  # raised on the way in: an HTTP error after the retries, no connection
            raise ProviderError(_describe(exc)) from exc
        try:
            async for data in _events(response.aiter_lines()):
                if data.startswith("[DONE]"):
                    done = True  # read on to the end, so that the connection can be reused
                elif not done:
                    for content in _read_chunk(data, result):
                        yield content
        finally:
            await response.aclose()
        if result.finish_reason is None:
            if not done:
                raise ProviderError("model server ended the stream early (no finish_reason, no [DONE])")
            result.finish_reason = "stop"  # some compatible servers send [DONE] but no finish_reason

    async def aclose(self) -> None:
        await self._client.close()


class EchoModel:
    """The offline provider: answers the last user message with `Echo: <message>`, word by word."""

    def __init__(self, settings: Settings) -> None:
        self.provider = "echo"
        self.model = "echo"
        self._delay_s = settings.ai_echo_delay_ms / 1000

    def request(self, messages: ChatMessages, model: str | None = None) -> Request:
        return {"model": model or self.model, "messages": messages, "stream": True}

    async def stream(self, request: Request, result: Completion) -> AsyncGenerator[str, None]:
        messages: ChatMessages = request["messages"]
        last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        pieces = PIECE.findall("Echo: " + last)
        result.prompt_tokens = sum(len(m.get("content", "")) for m in messages) // 4
        for count, piece in enumerate(pieces, start=1):
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            result.completion_tokens = count
            yield piece
        result.finish_reason = "stop"

    async def aclose(self) -> None:
        pass


def make_model(settings: Settings) -> ChatModel:
    if settings.provider == "echo":
        return EchoModel(settings)
    return OpenAIModel(settings)


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event: its `data:` lines, up to the blank line that ends it.

    An event the body ends in the middle of is dropped, as the SSE standard says. Only the read is
    guarded: a consumer's exception at `yield` passes through untouched.
    """
    data: list[str] = []
    while True:
        try:
            line = await anext(lines)
        except StopAsyncIteration:
            return
        except Exception as exc:  # the HTTP client's errors: a cut connection, a read timeout
            raise ProviderError(f"model server connection failed ({type(exc).__name__})") from exc
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield "\n".join(data)
            data = []


def _read_chunk(data: str, result: Completion) -> list[str]:
    """The text deltas of one chunk; its usage and finish_reason go into `result`.

    Compatible servers differ: any field may be missing, so each is read with care.
    """
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ProviderError("model server sent a malformed stream") from None
    if not isinstance(chunk, dict):
        raise ProviderError("model server sent a malformed stream")
    if chunk.get("error"):
        raise ProviderError("model server reported an error in the stream")
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        result.prompt_tokens = _count(usage.get("prompt_tokens"))
        result.completion_tokens = _count(usage.get("completion_tokens"))
    choices = chunk.get("choices")
    pieces = []
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("finish_reason"), str):
            result.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            pieces.append(content)
    return pieces


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _describe(exc: Exception) -> str:
    """A short reason for the record and the client: status and type, never the request or the key."""
    if isinstance(exc, openai.APIStatusError):
        code = f" ({exc.code[:60]})" if exc.code else ""
        return f"model server answered HTTP {exc.status_code}{code}"
    if isinstance(exc, openai.APITimeoutError):
        return "model server timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "model server connection failed"
    if isinstance(exc, openai.APIError):
        return "model server reported an error in the stream"
    if isinstance(exc, ValueError):
        return "model server sent a malformed stream"
    return f"model request failed ({type(exc).__name__})"
