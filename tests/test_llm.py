"""imsvc.llm through real HTTP to the fake model server, and the offline echo provider."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from imsvc.errors import ProviderError
from imsvc.llm import ChatModel, Completion, EchoModel, OpenAIModel, make_model
from imsvc.settings import Settings, SettingsError, load_settings
from tests import fakellm
from tests.fakellm import CUT_AFTER, FakeLLM

fake_llm = fakellm.fake_llm  # the fixture: pytest finds it in this module

MESSAGES = [
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
]
SECRET = "sk-test-secret-0123456789"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"_env_file": None, "dev_mode": True, "ai_provider": "openai", "ai_api_key": SECRET}
    return Settings(**(values | overrides))


@pytest.fixture
async def model(fake_llm: FakeLLM) -> AsyncIterator[ChatModel]:
    chat_model = make_model(
        settings(ai_base_url=fake_llm.url, ai_model="fake-model", ai_temperature=0.3, ai_max_tokens=77, ai_timeout_s=5)
    )
    yield chat_model
    await chat_model.aclose()


async def collect(chat_model: ChatModel, result: Completion, messages: list[dict[str, str]] = MESSAGES) -> list[str]:
    return [piece async for piece in chat_model.stream(chat_model.request(messages), result)]


async def test_stream_joins_to_the_reply_and_fills_the_result(fake_llm: FakeLLM, model: ChatModel) -> None:
    result = Completion()
    pieces = await collect(model, result)
    assert "".join(pieces) == fake_llm.reply
    assert len(pieces) == len(fake_llm.reply.split(" "))
    assert all(pieces)
    assert result.finish_reason == "stop"
    assert result.completion_tokens == len(pieces)
    assert result.prompt_tokens == 1 + sum(len(m["content"]) for m in MESSAGES) // 4
    assert len(fake_llm.requests) == 1


async def test_request_follows_the_settings(fake_llm: FakeLLM, model: ChatModel) -> None:
    await collect(model, Completion())
    [body] = fake_llm.requests
    assert body["model"] == "fake-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 77
    assert body["temperature"] == 0.3
    assert body["messages"] == MESSAGES


async def test_length_finish_reason(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "length"
    result = Completion()
    assert "".join(await collect(model, result)) == fake_llm.reply
    assert result.finish_reason == "length"


async def test_stream_without_finish_reason_ends_as_stop(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "no_finish"
    result = Completion()
    assert "".join(await collect(model, result)) == fake_llm.reply
    assert result.finish_reason == "stop"


async def test_stream_that_stops_without_done_or_finish_reason_raises(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "short"  # the body ends cleanly: the SDK's own stream would take it for a whole reply
    pieces: list[str] = []
    result = Completion()
    with pytest.raises(ProviderError, match="ended the stream early"):
        async for piece in model.stream(model.request(MESSAGES), result):
            pieces.append(piece)
    assert len(pieces) == CUT_AFTER and result.finish_reason is None
    assert len(fake_llm.requests) == 1


async def test_rate_limit_is_retried(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "429_once"
    result = Completion()
    assert "".join(await collect(model, result)) == fake_llm.reply
    assert result.finish_reason == "stop"
    assert len(fake_llm.requests) == 2


async def test_one_server_error_is_retried(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "500_once"
    assert "".join(await collect(model, Completion())) == fake_llm.reply
    assert len(fake_llm.requests) == 2


async def test_server_errors_give_up_after_three_requests(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "500"
    result = Completion()
    with pytest.raises(ProviderError) as caught:
        await collect(model, result)
    assert caught.value.code == "provider_error"
    assert "500" in caught.value.message
    assert SECRET not in str(caught.value)
    assert len(fake_llm.requests) == 3
    assert result.finish_reason is None


async def test_cut_stream_raises_after_the_text_so_far(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "cut"
    pieces: list[str] = []
    with pytest.raises(ProviderError, match="connection"):
        async for piece in model.stream(model.request(MESSAGES), Completion()):
            pieces.append(piece)
    assert len(pieces) == CUT_AFTER
    assert "".join(pieces) == " ".join(fake_llm.reply.split(" ")[:CUT_AFTER]) + " "
    assert len(fake_llm.requests) == 1  # never retried once the stream has started


async def test_malformed_stream_raises(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "malformed"
    pieces: list[str] = []
    with pytest.raises(ProviderError, match="malformed"):
        async for piece in model.stream(model.request(MESSAGES), Completion()):
            pieces.append(piece)
    assert len(pieces) == CUT_AFTER
    assert len(fake_llm.requests) == 1


async def test_caller_timeout_and_cancel_pass_through(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "hang"
    async with contextlib.aclosing(model.stream(model.request(MESSAGES), Completion())) as stream:
        assert await anext(stream) == "Hello "
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await anext(stream)
    # Leaving the stream hangs up on the model server.
    await fake_llm.wait_until(lambda: fake_llm.open_streams == 0)

    first = asyncio.Event()

    async def consume() -> None:
        async for _ in model.stream(model.request(MESSAGES), Completion()):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake_llm.wait_until(lambda: fake_llm.open_streams == 0)


async def test_stalled_stream_resumes(fake_llm: FakeLLM, model: ChatModel) -> None:
    fake_llm.mode = "hang"
    result = Completion()
    async with contextlib.aclosing(model.stream(model.request(MESSAGES), result)) as stream:
        pieces = [await anext(stream)]
        assert fake_llm.open_streams == 1
        fake_llm.release.set()
        pieces += [piece async for piece in stream]
    assert "".join(pieces) == fake_llm.reply
    assert result.finish_reason == "stop"


async def test_echo_answers_the_last_user_message() -> None:
    echo = make_model(settings(ai_provider="echo", ai_api_key=None, ai_echo_delay_ms=0))
    assert isinstance(echo, EchoModel)
    assert (echo.provider, echo.model) == ("echo", "echo")
    messages = [*MESSAGES, {"role": "assistant", "content": "a partial  answer"}]
    result = Completion()
    pieces = await collect(echo, result, messages)
    assert "".join(pieces) == "Echo: second question"
    assert pieces == ["Echo: ", "second ", "question"]
    assert pieces == await collect(echo, Completion(), messages)
    assert result.finish_reason == "stop"
    assert result.completion_tokens == len(pieces)
    assert result.prompt_tokens == sum(len(m["content"]) for m in messages) // 4
    await echo.aclose()


async def test_echo_paces_its_pieces() -> None:
    echo = make_model(settings(ai_provider="echo", ai_echo_delay_ms=20))
    loop = asyncio.get_running_loop()
    started = loop.time()
    pieces = await collect(echo, Completion(), [{"role": "user", "content": "one two"}])
    assert len(pieces) == 3
    assert loop.time() - started >= 3 * 0.020


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("  spaced\tout \n text ", ["Echo:   ", "spaced\t", "out \n ", "text "]),
        ("你好，世界", ["Echo: ", "你", "好", "，", "世", "界"]),
        ("", ["Echo: "]),
    ],
)
async def test_echo_pieces_join_back_exactly(text: str, pieces: list[str]) -> None:
    echo = EchoModel(settings(ai_provider="echo", ai_echo_delay_ms=0))
    got = await collect(echo, Completion(), [{"role": "user", "content": text}])
    assert got == pieces
    assert "".join(got) == "Echo: " + text


@pytest.mark.parametrize(
    ("provider", "base_url"),
    [
        ("openai", "https://api.openai.com/v1"),
        ("deepseek", "https://api.deepseek.com/v1"),
        ("anthropic", "https://api.anthropic.com/v1/"),
        ("ollama", "http://localhost:11434/v1"),
    ],
)
async def test_make_model_picks_the_provider_base_url(provider: str, base_url: str) -> None:
    chat_model = make_model(settings(ai_provider=provider, ai_api_key=None if provider == "ollama" else SECRET))
    assert isinstance(chat_model, OpenAIModel)
    assert (chat_model.provider, chat_model.model, chat_model.base_url) == (provider, "gpt-4o-mini", base_url)
    await chat_model.aclose()


async def test_make_model_honours_a_custom_base_url() -> None:
    url = "http://vllm.local:8000/v1"
    chat_model = make_model(settings(ai_provider="deepseek", ai_api_key=None, ai_base_url=url, ai_model="m"))
    assert isinstance(chat_model, OpenAIModel)
    assert (chat_model.provider, chat_model.model, chat_model.base_url) == ("deepseek", "m", url)
    await chat_model.aclose()


def test_a_hosted_provider_wants_a_key() -> None:
    with pytest.raises(SettingsError, match="AI_API_KEY"):
        load_settings(_env_file=None, dev_mode=True, ai_provider="anthropic", ai_api_key=None)
