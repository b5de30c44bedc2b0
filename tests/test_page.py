"""The chat page (SPEC §8) in a real headless Chromium: sign in, send, stream, history, fragment mode, Stop."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import ServerFactory
from tests.helpers import LiveServer, token, uid

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

from playwright.async_api import Locator, Page, async_playwright, expect  # noqa: E402

pytestmark = pytest.mark.browser

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
expect.set_options(timeout=8000)


@pytest_asyncio.fixture
async def page() -> AsyncIterator[Page]:
    """A fresh browser per test; an uncaught error in the page fails the test."""
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            tab = await browser.new_page()
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab
        finally:
            await browser.close()
    assert not errors, errors


async def sign_in(page: Page, server: LiveServer, user: str) -> None:
    await page.goto(server.url)
    await page.get_by_label("User name").fill(user)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("status")).to_have_text("Connected")


async def open_session(page: Page, session_id: str) -> None:
    await page.get_by_label("Session id").fill(session_id)
    await page.get_by_role("button", name="Open", exact=True).click()


def shown(page: Page, seq: int) -> Locator:
    """The message with `seq` in the open conversation."""
    return page.get_by_role("log").locator(f"li[data-seq='{seq}']")


async def test_sign_in_send_and_watch_the_reply(server: LiveServer, page: Page) -> None:
    user, session_id = uid(), uid("s")
    await sign_in(page, server, user)
    await open_session(page, session_id)
    await page.get_by_label("Message").fill("hello there")
    await page.get_by_role("button", name="Send", exact=True).click()

    await expect(shown(page, 1).locator(".body")).to_have_text("hello there")
    await expect(shown(page, 1).locator(".author")).to_have_text(user)
    await expect(shown(page, 2).locator(".body")).to_have_text("Echo: hello there")
    await expect(shown(page, 2).locator(".author")).to_have_text("ai_bot")
    await expect(page.locator(".streaming")).to_have_count(0)
    await expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    await expect(page.get_by_label("Message")).to_have_value("")
    # The session it created shows up in the list.
    await expect(page.get_by_role("button", name=session_id, exact=True)).to_be_visible()

    # Enter sends too.
    await page.get_by_label("Message").fill("second")
    await page.get_by_label("Message").press("Enter")
    await expect(shown(page, 4).locator(".body")).to_have_text("Echo: second")
    await expect(page.get_by_role("log").locator("li")).to_have_count(4)


async def test_message_text_is_shown_as_text(server: LiveServer, page: Page) -> None:
    user, session_id = uid(), uid("s")
    evil = "<b>bold</b><script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
    await sign_in(page, server, user)
    await open_session(page, session_id)
    await page.get_by_label("Message").fill(evil)
    await page.get_by_label("Message").press("Enter")

    await expect(shown(page, 1).locator(".body")).to_have_text(evil)
    await expect(shown(page, 2).locator(".body")).to_have_text(f"Echo: {evil}")
    log = page.get_by_role("log")
    for tag in ("b", "script", "img"):
        await expect(log.locator(tag)).to_have_count(0)
    assert await page.evaluate("window.pwned") is None


async def test_a_message_from_another_user_arrives_live(server: LiveServer, page: Page) -> None:
    me, other = uid(), uid()
    session_id = await server.room(other, me)
    await server.send(other, session_id, "before you came")
    await sign_in(page, server, me)
    await page.get_by_role("button", name=session_id, exact=True).click()  # from the session list
    await expect(shown(page, 1).locator(".body")).to_have_text("before you came")

    await server.send(other, session_id, "live one")
    await expect(shown(page, 2).locator(".body")).to_have_text("live one")
    await expect(shown(page, 2).locator(".author")).to_have_text(other)
    await expect(page.get_by_role("log").locator("li")).to_have_count(2)


async def test_fragment_token_opens_the_session_and_scrolls_back(server: LiveServer, page: Page) -> None:
    owner = uid()
    session_id = await server.room(owner)
    for n in range(1, 54):
        await server.send(owner, session_id, f"message {n}")

    await page.goto(f"{server.url}/#token={token(owner)}&session={session_id}")
    log = page.get_by_role("log")
    await expect(shown(page, 53).locator(".body")).to_have_text("message 53")
    await expect(log.locator("li")).to_have_count(50)  # the newest page: seq 4..53
    await expect(page.get_by_label("User name")).to_be_hidden()

    await page.get_by_role("button", name="Load older").click()
    await expect(log.locator("li")).to_have_count(53)
    await expect(log.locator("li").first.locator(".body")).to_have_text("message 1")
    await expect(page.get_by_role("button", name="Load older")).to_be_hidden()
    seqs = await log.locator("li").evaluate_all("items => items.map(li => Number(li.dataset.seq))")
    assert seqs == list(range(1, 54))


async def test_outside_dev_mode_the_name_form_says_to_use_a_token(make_server: ServerFactory, page: Page) -> None:
    server = await make_server(dev_mode=False)
    await page.goto(server.url)
    await page.get_by_label("User name").fill(uid())
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("#token=")
    await expect(page.get_by_label("Message")).to_be_hidden()


async def test_stop_ends_a_streaming_reply(make_server: ServerFactory, page: Page) -> None:
    server = await make_server(ai_echo_delay_ms=200)
    user, session_id = uid(), uid("s")
    long_text = " ".join(f"word{n}" for n in range(60))
    await sign_in(page, server, user)
    await open_session(page, session_id)
    await page.get_by_label("Message").fill(long_text)
    await page.get_by_role("button", name="Send", exact=True).click()

    streaming = page.locator(".streaming .body")
    await expect(streaming).to_contain_text("Echo: word0")
    stop = page.get_by_role("button", name="Stop")
    await stop.click()

    await expect(stop).to_be_hidden()
    await expect(page.locator(".streaming")).to_have_count(0)
    final = shown(page, 2)
    await expect(final.locator(".author")).to_have_text("ai_bot")
    await expect(final.locator(".note")).to_have_text("stopped")
    text = await final.locator(".body").text_content()
    assert text is not None and text.startswith("Echo: word0") and len(text) < len(f"Echo: {long_text}")

    records = (await server.get(f"/ai/records?session_id={session_id}", user)).json()["records"]
    assert [(r["status"], r["finish_reason"]) for r in records] == [(3, "cancelled")]


async def test_reconnects_and_catches_up(server: LiveServer, page: Page) -> None:
    me, other = uid(), uid()
    session_id = await server.room(other, me)
    await page.goto(f"{server.url}/#token={token(me)}&session={session_id}")
    await expect(page.get_by_role("status")).to_have_text("Connected")
    await expect(page.get_by_role("log")).to_be_visible()

    await page.evaluate("state.ws.close()")  # the page must notice, wait, reconnect and sync
    await expect(page.get_by_role("status")).to_contain_text("Disconnected")
    await server.send(other, session_id, "while you were away")
    await expect(page.get_by_role("status")).to_have_text("Connected")
    await expect(shown(page, 1).locator(".body")).to_have_text("while you were away")
    await server.send(other, session_id, "after the reconnect")
    await expect(shown(page, 2).locator(".body")).to_have_text("after the reconnect")
    await expect(page.get_by_role("log").locator("li")).to_have_count(2)


async def test_reply_frames_merge_by_code_point_offset(server: LiveServer, page: Page) -> None:
    """Overlapping, repeated and early deltas (as after a resume) leave the text whole; offsets count code points."""
    owner = uid()
    session_id = await server.room(owner)
    await page.goto(f"{server.url}/#token={token(owner)}&session={session_id}")
    await expect(page.get_by_role("status")).to_have_text("Connected")
    await expect(page.locator("#hint")).to_have_text("No messages yet.")

    frames = [
        {"type": "ai_reply_start", "record_id": "r1", "session_id": session_id, "user_message_id": "m1"},
        {"type": "ai_reply_delta", "record_id": "r1", "session_id": session_id, "delta": "Echo: 😀", "offset": 0},
        {"type": "ai_reply_delta", "record_id": "r1", "session_id": session_id, "delta": "Echo: ", "offset": 0},
        {"type": "ai_reply_delta", "record_id": "r1", "session_id": session_id, "delta": "😀 hi", "offset": 6},
        {"type": "ai_reply_delta", "record_id": "r1", "session_id": session_id, "delta": "later", "offset": 40},
        {"type": "ai_reply_delta", "record_id": "r1", "session_id": session_id, "delta": " there", "offset": 10},
        {"type": "ai_reply_delta", "record_id": "r1", "session_id": "elsewhere", "delta": "!", "offset": 16},
    ]
    await page.evaluate("frames => frames.forEach(f => handlers[f.type](f))", frames)
    bubble = page.locator(".streaming .body")
    await expect(bubble).to_have_text("Echo: 😀 hi there")
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()

    snapshot = {"type": "ai_reply_snapshot", "record_id": "r1", "session_id": session_id, "user_message_id": "m1"}
    await page.evaluate("f => handlers[f.type](f)", {**snapshot, "content": "Echo: 😀 hi there, you"})
    await page.evaluate("f => handlers[f.type](f)", frames[5])  # overlaps the snapshot: ignored
    await expect(bubble).to_have_text("Echo: 😀 hi there, you")

    end = {"type": "ai_reply", "record_id": "r1", "session_id": session_id, "content": "", "message": None}
    await page.evaluate("f => handlers[f.type](f)", {**end, "finish_reason": "cancelled"})
    await expect(page.locator(".streaming")).to_have_count(0)
    await expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    await expect(page.get_by_role("alert")).to_contain_text("stopped before any text")
