"""The chat page (SPEC §8) in a real headless Chromium: sign in, send, stream, history, fragment mode, Stop;
edits, deletes and reactions (SPEC §10), live between two users and after a reconnect or a reload; new
conversations, members and settings (SPEC §11); unread badges, "seen by", typing and presence (SPEC §12)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio

from tests.conftest import ServerFactory
from tests.helpers import LiveServer, auth, token, uid

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

from playwright.async_api import Browser, Locator, Page, async_playwright, expect  # noqa: E402

pytestmark = pytest.mark.browser

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
expect.set_options(timeout=8000)


Tabs = Callable[[], Awaitable[Page]]


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    """A fresh browser per test."""
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture
async def tabs(browser: Browser) -> AsyncIterator[Tabs]:
    """New tabs, each in its own browser context (as two people on two machines); an uncaught error
    in any of them fails the test."""
    errors: list[str] = []

    async def new_tab() -> Page:
        tab = await browser.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        return tab

    yield new_tab
    assert not errors, errors


@pytest_asyncio.fixture
async def page(tabs: Tabs) -> Page:
    return await tabs()


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


# ---- edits, deletes and reactions (SPEC §10) ----


async def open_as(page: Page, server: LiveServer, user: str, session_id: str) -> None:
    """Open the page as `user` on `session_id`, with the session list (and so the user's role) loaded."""
    await page.goto(f"{server.url}/#token={token(user)}&session={session_id}")
    await expect(page.get_by_role("status")).to_have_text("Connected")
    await expect(page.get_by_role("button", name=session_id, exact=True)).to_be_visible()


async def change(server: LiveServer, method: str, path: str, user: str, body: Any = None) -> None:
    r = await server.http.request(method, path, json=body, headers=auth(user))
    assert r.status_code == 200, r.text


def reaction(message: Locator, emoji: str) -> Locator:
    return message.get_by_role("button", name=f"React {emoji}", exact=True)


async def expect_reaction(message: Locator, emoji: str, count: int, pressed: bool) -> None:
    chip = reaction(message, emoji)
    await expect(chip.locator(".count")).to_have_text(str(count) if count else "")
    await expect(chip).to_have_attribute("aria-pressed", "true" if pressed else "false")


async def expect_tombstone(message: Locator) -> None:
    await expect(message.locator(".body")).to_have_text("message deleted")
    await expect(message.get_by_role("button")).to_have_count(0)  # no actions, no reactions


SUMMARY = """() => [...document.querySelectorAll("#messages li")].map((li) => ({
  seq: Number(li.dataset.seq),
  author: li.querySelector(".author").textContent,
  body: li.querySelector(".body").textContent,
  edited: !li.querySelector(".edited")?.hidden,
  deleted: li.classList.contains("deleted"),
  reactions: [...li.querySelectorAll(".reaction.used")].map((b) => b.textContent),
}))"""


async def test_edits_and_deletes_show_live_to_the_other_member(server: LiveServer, tabs: Tabs) -> None:
    alice, bob = uid(), uid()
    session_id = await server.room(alice, bob)
    a, b = await tabs(), await tabs()
    await open_as(a, server, alice, session_id)
    await open_as(b, server, bob, session_id)

    await a.get_by_label("Message").fill("frist draft")
    await a.get_by_label("Message").press("Enter")
    mine, theirs = shown(a, 1), shown(b, 1)
    await expect(theirs.locator(".body")).to_have_text("frist draft")
    await expect(reaction(theirs, "👍")).to_be_visible()
    # Only the author edits; only the author or the owner deletes.
    await expect(theirs.get_by_role("button", name="Edit")).to_be_hidden()
    await expect(theirs.get_by_role("button", name="Delete")).to_be_hidden()
    await expect(mine.locator(".edited")).to_be_hidden()

    await mine.get_by_role("button", name="Edit").click()
    await mine.get_by_role("textbox", name="Edit message").fill("first draft, <i>fixed</i>")
    await mine.get_by_role("button", name="Save").click()
    await expect(mine.get_by_role("textbox", name="Edit message")).to_be_hidden()
    for shown_to in (mine, theirs):
        await expect(shown_to.locator(".body")).to_have_text("first draft, <i>fixed</i>")
        await expect(shown_to.locator(".edited")).to_have_text("(edited)")
        await expect(shown_to.locator("i")).to_have_count(0)

    # Escape leaves an edit without sending it; Enter sends one.
    await mine.get_by_role("button", name="Edit").click()
    await mine.get_by_role("textbox", name="Edit message").fill("never sent")
    await mine.get_by_role("textbox", name="Edit message").press("Escape")
    await expect(mine.locator(".body")).to_have_text("first draft, <i>fixed</i>")
    await mine.get_by_role("button", name="Edit").click()
    await mine.get_by_role("textbox", name="Edit message").fill("final")
    await mine.get_by_role("textbox", name="Edit message").press("Enter")
    await expect(theirs.locator(".body")).to_have_text("final")

    a.once("dialog", lambda dialog: dialog.accept())
    await mine.get_by_role("button", name="Delete").click()
    await expect_tombstone(mine)
    await expect_tombstone(theirs)
    await expect(theirs.locator(".edited")).to_be_hidden()
    await expect(b.locator(".session .last")).to_have_text(f"{alice}: message deleted")
    await expect(b.get_by_role("log").locator("li")).to_have_count(1)  # change rows are not drawn as messages


async def test_reactions_toggle_and_show_live(server: LiveServer, tabs: Tabs) -> None:
    alice, bob = uid(), uid()
    session_id = await server.room(alice, bob)
    await server.send(alice, session_id, "react to me")
    a, b = await tabs(), await tabs()
    await open_as(a, server, alice, session_id)
    await open_as(b, server, bob, session_id)
    mine, theirs = shown(a, 1), shown(b, 1)
    await expect_reaction(theirs, "👍", 0, pressed=False)

    await reaction(theirs, "👍").click()
    await expect_reaction(theirs, "👍", 1, pressed=True)
    await expect_reaction(mine, "👍", 1, pressed=False)
    await expect(reaction(mine, "👍")).to_have_attribute("title", bob)

    await reaction(mine, "👍").click()
    await expect_reaction(mine, "👍", 2, pressed=True)
    await expect_reaction(theirs, "👍", 2, pressed=True)
    await expect(reaction(theirs, "👍")).to_have_attribute("title", f"{bob}, {alice}")

    await reaction(theirs, "👍").click()  # again: takes it back
    await expect_reaction(theirs, "👍", 1, pressed=False)
    await expect_reaction(mine, "👍", 1, pressed=True)

    # An emoji outside the offered four (here from the API) gets its own chip, and goes with its last reaction.
    rocket = await server.send(bob, session_id, "rocket?")
    path = f"/message/{rocket['message_id']}/reactions/{quote('🚀')}"
    on_a, on_b = shown(a, rocket["seq"]), shown(b, rocket["seq"])
    await change(server, "PUT", path, alice)
    await expect_reaction(on_b, "🚀", 1, pressed=False)
    await reaction(on_b, "🚀").click()
    await expect_reaction(on_a, "🚀", 2, pressed=True)
    await change(server, "DELETE", path, alice)
    await expect_reaction(on_b, "🚀", 1, pressed=True)
    await reaction(on_b, "🚀").click()
    await expect(reaction(on_a, "🚀")).to_have_count(0)
    await expect(reaction(on_b, "🚀")).to_have_count(0)


async def test_a_reconnect_and_a_reload_show_the_same_folded_state(server: LiveServer, tabs: Tabs) -> None:
    alice, bob, carol = uid(), uid(), uid()
    session_id = await server.room(alice, bob)
    one = await server.send(alice, session_id, "one")
    two = await server.send(alice, session_id, "two")
    a, b = await tabs(), await tabs()
    await open_as(a, server, alice, session_id)
    await open_as(b, server, bob, session_id)
    await expect(shown(b, two["seq"]).locator(".body")).to_have_text("two")

    # Bob goes away and stays away (no reconnect) until everything below is stored.
    await b.evaluate("() => { window.reconnect = connect; connect = () => {}; state.ws.close(); }")
    await expect(b.get_by_role("status")).to_contain_text("Disconnected")
    react = "/message/{}/reactions/{}".format
    await change(server, "PATCH", f"/message/{one['message_id']}", alice, {"content": "one, edited"})
    await change(server, "PUT", react(one["message_id"], quote("👍")), bob)
    await change(server, "PUT", react(one["message_id"], quote("👍")), alice)
    await change(server, "PUT", react(two["message_id"], quote("❤️")), alice)
    assert (await server.post(f"/sessions/{session_id}/members", alice, {"user_id": carol})).status_code == 201
    three = await server.send(alice, session_id, "three")  # first seen by bob in the same sync as its changes
    await change(server, "PATCH", f"/message/{three['message_id']}", alice, {"content": "three, edited"})
    await change(server, "PUT", react(three["message_id"], quote("🎉")), bob)
    await change(server, "PUT", react(three["message_id"], quote("😂")), alice)
    await change(server, "DELETE", react(three["message_id"], quote("🎉")), bob)
    await change(server, "DELETE", f"/message/{two['message_id']}", alice)

    await expect_tombstone(shown(a, two["seq"]))  # alice saw it all live; the delete came last
    await b.evaluate("() => { connect = window.reconnect; connect(); }")
    await expect(b.get_by_role("status")).to_have_text("Connected")
    await expect_tombstone(shown(b, two["seq"]))
    await expect(shown(b, 1).locator(".body")).to_have_text("one, edited")
    await expect_reaction(shown(b, 1), "👍", 2, pressed=True)
    await expect(shown(b, three["seq"]).locator(".body")).to_have_text("three, edited")
    await expect_reaction(shown(b, three["seq"]), "😂", 1, pressed=False)
    await expect_reaction(shown(b, three["seq"]), "🎉", 0, pressed=False)
    await expect(b.get_by_role("log").locator("li")).to_have_count(3)  # no bubble for carol joining
    live = await a.evaluate(SUMMARY)
    assert await b.evaluate(SUMMARY) == live
    assert [m["edited"] for m in live] == [True, False, True]

    await b.reload()  # history (TEXT rows, folded), then a sync from its last seq
    await expect(b.get_by_role("status")).to_have_text("Connected")
    await expect_tombstone(shown(b, two["seq"]))
    await expect(shown(b, three["seq"]).locator(".body")).to_have_text("three, edited")
    assert await b.evaluate(SUMMARY) == live


async def test_the_owner_deletes_any_message_but_edits_only_their_own(server: LiveServer, tabs: Tabs) -> None:
    alice, bob = uid(), uid()
    session_id = await server.room(alice, bob)  # alice owns it
    await server.send(alice, session_id, "from alice")
    await server.send(bob, session_id, "from bob")
    a, b = await tabs(), await tabs()
    await open_as(a, server, alice, session_id)
    await open_as(b, server, bob, session_id)

    await expect(shown(b, 2).get_by_role("button", name="Edit")).to_be_visible()
    await expect(shown(b, 2).get_by_role("button", name="Delete")).to_be_visible()
    await expect(shown(b, 1).get_by_role("button", name="Delete")).to_be_hidden()
    await expect(shown(a, 2).get_by_role("button", name="Edit")).to_be_hidden()

    a.once("dialog", lambda dialog: dialog.accept())
    await shown(a, 2).get_by_role("button", name="Delete").click()
    await expect_tombstone(shown(b, 2))
    await expect_tombstone(shown(a, 2))
    await expect(shown(b, 1).locator(".body")).to_have_text("from alice")


async def test_the_assistants_reply_may_be_deleted_not_edited(server: LiveServer, page: Page) -> None:
    user, session_id = uid(), uid("s")
    await sign_in(page, server, user)
    await open_session(page, session_id)
    await page.get_by_label("Message").fill("hi")
    await page.get_by_label("Message").press("Enter")
    bot = shown(page, 2)
    await expect(bot.locator(".body")).to_have_text("Echo: hi")
    await expect(page.get_by_role("button", name=session_id, exact=True)).to_be_visible()  # our role: owner
    await expect(bot.get_by_role("button", name="Delete")).to_be_visible()
    await expect(bot.get_by_role("button", name="Edit")).to_be_hidden()
    await reaction(bot, "🎉").click()
    await expect_reaction(bot, "🎉", 1, pressed=True)

    page.once("dialog", lambda dialog: dialog.dismiss())  # changing one's mind keeps the message
    await bot.get_by_role("button", name="Delete").click()
    await expect(bot.get_by_role("button", name="Delete")).to_be_visible()
    await expect(bot.locator(".body")).to_have_text("Echo: hi")


async def test_a_refused_edit_keeps_the_text_and_a_delete_ends_an_edit(server: LiveServer, page: Page) -> None:
    owner = uid()
    session_id = await server.room(owner)
    sent = await server.send(owner, session_id, "keep me")
    await open_as(page, server, owner, session_id)
    mine = shown(page, 1)
    await mine.get_by_role("button", name="Edit").click()
    box = mine.get_by_role("textbox", name="Edit message")
    await box.fill("   ")
    await box.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("cannot be empty")

    # The server refuses (here: the message is not found): the box stays open with what was typed.
    await page.evaluate("id => { state.entries.get(id).m.message_id = 'msg_unknown'; }", sent["message_id"])
    await box.fill("typed with care")
    await mine.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("alert")).to_contain_text("no such message")
    await expect(box).to_have_value("typed with care")
    await expect(box).to_be_editable()
    await page.evaluate("id => { state.entries.get(id).m.message_id = id; }", sent["message_id"])

    # Deleted elsewhere (another device) while the box is open: the tombstone replaces it.
    await change(server, "DELETE", f"/message/{sent['message_id']}", owner)
    await expect_tombstone(mine)
    await expect(box).to_be_hidden()


def event(session_id: str, seq: int, kind: str, content: str, target: str | None, user: str = "x") -> dict[str, Any]:
    return {
        "id": f"msg_{seq}",
        "message_id": f"msg_{seq}",
        "session_id": session_id,
        "seq": seq,
        "from_user_id": user,
        "msg_type": kind,
        "msg_content": content,
        "target_message_id": target,
        "data": None,
        "client_msg_id": None,
        "created_at": "2024-01-01T00:00:00+00:00",
        "edited_at": None,
        "deleted": False,
        "reactions": {},
    }


async def test_change_rows_apply_once_in_order_and_wait_for_their_target(server: LiveServer, page: Page) -> None:
    """Frames as a reconnect can order them: a live edit before the older one that a sync fills in, a
    sync whose new target already includes its changes, a change to a message not loaded yet."""
    owner = uid()
    session_id = await server.room(owner)
    await open_as(page, server, owner, session_id)
    await expect(page.locator("#hint")).to_have_text("No messages yet.")

    def ev(seq: int, kind: str, content: str = "", target: int | None = None, user: str = "x") -> dict[str, Any]:
        return event(session_id, seq, kind, content, f"msg_{target}" if target else None, user)

    folded = {**ev(14, "TEXT", "b, edited"), "edited_at": "2024-01-01T00:00:00+00:00"}
    folded["reactions"] = {"👍": ["x", "y"], "__proto__": ["y"]}
    frames = [
        {"type": "new_message", "message": ev(10, "TEXT", "a")},
        {"type": "new_message", "message": ev(12, "EDIT", "a2", target=10)},  # live, ahead of seq 11
        {"type": "new_message", "message": ev(20, "REACT", "🎉", target=3, user="y")},  # msg_3: not loaded
        {
            "type": "sync_result",
            "session_id": session_id,
            "has_more": False,
            "messages": [
                ev(11, "EDIT", "a1", target=10),  # older than the edit already shown
                ev(12, "EDIT", "a2", target=10),
                ev(13, "REACT", "👍", target=10),
                folded,  # its changes below are already in it
                ev(15, "REACT", "👍", target=14, user="y"),
                ev(16, "EDIT", "b, edited", target=14),
                ev(17, "REACT", "__proto__", target=14, user="y"),
                {**ev(18, "MEMBER"), "data": {"user_id": "z", "action": "added", "role": "member"}},
                ev(19, "UNREACT", "👍", target=10, user="nobody"),
            ],
        },
        {"type": "new_message", "message": ev(3, "TEXT", "older, loaded late")},
    ]
    # As JSON text, parsed in the page like a frame: "__proto__" stays an ordinary key.
    await page.evaluate("text => JSON.parse(text).forEach(f => handlers[f.type](f))", json.dumps(frames))
    await expect(page.get_by_role("log").locator("li")).to_have_count(3)  # 3, 10, 14: no MEMBER bubble
    await expect(shown(page, 10).locator(".body")).to_have_text("a2")
    await expect_reaction(shown(page, 10), "👍", 1, pressed=False)
    await expect(shown(page, 14).locator(".body")).to_have_text("b, edited")
    await expect_reaction(shown(page, 14), "👍", 2, pressed=False)
    await expect_reaction(shown(page, 14), "__proto__", 1, pressed=False)
    await expect_reaction(shown(page, 3), "🎉", 1, pressed=False)
    seqs = await page.get_by_role("log").locator("li").evaluate_all("items => items.map(li => Number(li.dataset.seq))")
    assert seqs == [3, 10, 14]


# ---- running a session (SPEC §11): new conversations, members, settings ----


def session_button(page: Page, name: str) -> Locator:
    """The session's entry in the list, by its title (or id when it has none)."""
    return page.get_by_role("navigation").get_by_role("button", name=name, exact=True)


def member(page: Page, user: str) -> Locator:
    return page.get_by_role("list", name="Members").get_by_role("listitem").filter(has_text=user)


def dot(page: Page, user: str, status: str) -> Locator:
    return member(page, user).get_by_role("img", name=status, exact=True)


async def add_member(page: Page, user: str) -> None:
    await page.get_by_label("Add member").fill(user)
    await page.get_by_role("button", name="Add", exact=True).click()
    await expect(member(page, user)).to_be_visible()
    await expect(page.get_by_label("Add member")).to_have_value("")


async def test_new_conversation_creates_and_opens_a_session(server: LiveServer, page: Page) -> None:
    user = uid()
    await sign_in(page, server, user)
    await page.get_by_role("button", name="New conversation").click()
    await expect(member(page, f"{user} (you)")).to_contain_text("owner")
    (listed,) = (await server.get("/sessions", user)).json()["sessions"]
    session_id = listed["session_id"]
    assert listed["role"] == "owner" and listed["ai_enabled"] is True
    await expect(page.get_by_role("heading", name=session_id)).to_be_visible()
    await expect(session_button(page, session_id)).to_have_attribute("aria-current", "true")
    await expect(page.get_by_label("Message")).to_be_focused()

    await page.get_by_label("Message").press_sequentially("hi")
    await page.get_by_label("Message").press("Enter")
    await expect(shown(page, 2).locator(".body")).to_have_text("Echo: hi")  # the assistant is on by default

    await page.get_by_role("button", name="New conversation").click()  # a second one, distinct, on top
    await expect(page.locator(".session")).to_have_count(2)
    await expect(page.locator(".session").first).to_have_attribute("aria-current", "true")
    await expect(page.get_by_role("log").locator("li")).to_have_count(0)


async def test_members_are_added_removed_and_leave(server: LiveServer, tabs: Tabs) -> None:
    alice, bob = uid(), uid()
    session_id = await server.room(alice)
    a, b = await tabs(), await tabs()
    await open_as(a, server, alice, session_id)
    await sign_in(b, server, bob)
    await expect(member(a, alice)).to_contain_text("owner")
    await expect(dot(a, alice, "online")).to_be_visible()

    await add_member(a, bob)
    await session_button(b, session_id).click()  # the session appeared in bob's list
    await expect(member(b, alice)).to_contain_text("owner")
    await expect(member(b, f"{bob} (you)")).to_be_visible()
    # A member sees the settings but cannot change them, nor remove anyone.
    await expect(b.get_by_label("Title")).to_be_disabled()
    await expect(b.get_by_role("button", name="Save settings")).to_be_hidden()
    await expect(b.get_by_role("button", name=re.compile("^Remove"))).to_have_count(0)

    await a.get_by_role("button", name=f"Remove {bob}").click()
    await expect(member(a, bob)).to_have_count(0)
    await expect(session_button(b, session_id)).to_have_count(0)
    await expect(b.locator("#hint")).to_have_text(f"{alice} removed you from this conversation.")
    await expect(b.get_by_label("Message")).to_be_disabled()
    await expect(b.get_by_role("list", name="Members")).to_be_hidden()

    # Added again, bob opens it (its history replays his removal, which no longer holds) and leaves.
    await add_member(a, bob)
    await session_button(b, session_id).click()
    await expect(member(b, f"{bob} (you)")).to_be_visible()
    b.once("dialog", lambda dialog: dialog.accept())
    await b.get_by_role("button", name="Leave conversation").click()
    await expect(b.locator("#hint")).to_have_text("You left this conversation.")
    await expect(session_button(b, session_id)).to_have_count(0)
    await expect(member(a, bob)).to_have_count(0)

    # The owner leaves: the earliest member left (bob, here) becomes the owner, live on his page.
    await add_member(a, bob)
    await session_button(b, session_id).click()
    await expect(b.get_by_label("Title")).to_be_disabled()
    a.once("dialog", lambda dialog: dialog.accept())
    await a.get_by_role("button", name="Leave conversation").click()
    await expect(session_button(a, session_id)).to_have_count(0)
    await expect(member(b, alice)).to_have_count(0)
    await expect(member(b, f"{bob} (you)")).to_contain_text("owner")
    await expect(b.get_by_label("Title")).to_be_enabled()
    await expect(b.get_by_role("button", name="Save settings")).to_be_visible()
    detail = (await server.get(f"/sessions/{session_id}", bob)).json()
    assert [(m["user_id"], m["role"]) for m in detail["members"]] == [(bob, "owner")]


async def test_the_owner_sets_a_mention_trigger_and_the_assistant_answers_mentions_only(
    make_server: ServerFactory, tabs: Tabs
) -> None:
    server = await make_server(ai_models="echo-small,echo-large")
    alice, bob = uid(), uid()
    session_id = await server.room(alice, bob, ai=True)
    a, b = await tabs(), await tabs()
    await open_as(a, server, alice, session_id)
    await open_as(b, server, bob, session_id)
    await expect(b.get_by_label("Title")).to_be_disabled()
    await expect(b.locator("#settings-note")).to_have_text(f"Only the owner ({alice}) changes these.")

    title = "Planning <b>Q3</b>"
    await a.get_by_label("Title").fill(title)
    await a.get_by_label("Assistant answers").select_option("mention")
    await a.get_by_label("System prompt").fill("Be brief.")
    await a.get_by_label("Model").fill("gpt-huge")  # not in the server's AI_MODELS
    await a.get_by_role("button", name="Save settings").click()
    await expect(a.get_by_role("alert")).to_contain_text("ai_model must be one of")
    await expect(a.get_by_label("Title")).to_have_value(title)  # what was typed stays
    await a.get_by_label("Model").fill("echo-small")
    await a.get_by_role("button", name="Save settings").click()
    await expect(a.locator("#settings-saved")).to_have_text("Saved.")

    for shown_to in (a, b):
        await expect(session_button(shown_to, title)).to_be_visible()  # the title replaces the id, as text
        await expect(shown_to.get_by_role("heading", name=title)).to_be_visible()
        await expect(shown_to.get_by_label("Message")).to_have_attribute("placeholder", re.compile("@ai_bot"))
    await expect(b.get_by_label("Assistant answers")).to_have_value("mention")  # live, through the SETTINGS event
    await expect(b.get_by_label("System prompt")).to_have_value("Be brief.")
    await expect(b.get_by_label("Model")).to_have_value("echo-small")
    await expect(b.get_by_role("navigation").locator("b")).to_have_count(0)

    await b.get_by_label("Message").fill("no reply to this one")
    await b.get_by_label("Message").press("Enter")
    await expect(a.get_by_role("log").locator("li .body")).to_have_text(["no reply to this one"])
    await a.get_by_label("Message").fill("@ai_bot are you there?")
    await a.get_by_label("Message").press("Enter")
    answered = [  # in a group, the model reads who wrote each message, and the echo repeats it
        "no reply to this one",
        "@ai_bot are you there?",
        f"Echo: {alice}: @ai_bot are you there?",
    ]
    await expect(b.get_by_role("log").locator("li .body")).to_have_text(answered)
    await b.get_by_label("Message").fill("and you, @Assistant?")
    await b.get_by_label("Message").press("Enter")
    answered += ["and you, @Assistant?", f"Echo: {bob}: and you, @Assistant?"]
    for shown_to in (a, b):
        await expect(shown_to.get_by_role("log").locator("li .body")).to_have_text(answered)
    records = (await server.get(f"/ai/records?session_id={session_id}", alice)).json()["records"]
    assert sorted(r["model"] for r in records) == ["echo-small", "echo-small"]  # two replies, the session's model
    detail = (await server.get(f"/sessions/{session_id}", bob)).json()
    assert (detail["title"], detail["ai_trigger"], detail["ai_system_prompt"]) == (title, "mention", "Be brief.")


# ---- read markers, unread counts, typing, presence (SPEC §12) ----


def badge(page: Page, name: str) -> Locator:
    return session_button(page, name).locator(".unread")


async def test_unread_badges_count_and_clear_on_every_page_of_the_reader(server: LiveServer, tabs: Tabs) -> None:
    alice, bob = uid(), uid()
    here, there = await server.room(alice, bob), await server.room(alice, bob)
    b1 = await tabs()
    await open_as(b1, server, bob, here)
    await expect(session_button(b1, there)).to_be_visible()

    one = await server.send(alice, there, "one")
    await server.send(alice, there, "two")
    await server.send(alice, here, "in view")  # the open conversation: read as it arrives
    await expect(badge(b1, there)).to_have_text("2 unread")
    await expect(shown(b1, 1).locator(".body")).to_have_text("in view")
    await expect(badge(b1, here)).to_have_count(0)

    b2 = await tabs()  # bob's other page: its counts come from the server
    await open_as(b2, server, bob, here)
    await expect(badge(b2, there)).to_have_text("2 unread")
    await expect(badge(b2, here)).to_have_count(0)
    await expect(b2).to_have_title("(2) imsvc chat")

    await server.send(alice, there, "three")
    await change(server, "DELETE", f"/message/{one['message_id']}", alice)  # a deleted message no longer counts
    for page in (b1, b2):
        await expect(badge(page, there)).to_have_text("2 unread")
        await expect(session_button(page, there)).to_contain_text(f"{alice}: three")

    await session_button(b1, there).click()
    await expect(shown(b1, 3).locator(".body")).to_have_text("three")
    await expect(badge(b1, there)).to_have_count(0)
    await expect(badge(b2, there)).to_have_count(0)  # through the read_marker frame for bob's own user
    await expect(b2).to_have_title("imsvc chat")
    listed = {s["session_id"]: s for s in (await server.get("/sessions", bob)).json()["sessions"]}
    assert (listed[there]["unread"], listed[there]["last_read_seq"]) == (0, 4)


TYPING_FRAMES = """() => {
  window.typingSent = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    const frame = JSON.parse(data);
    if (frame.type === "typing") window.typingSent.push(frame.active);
    return send.call(this, data);
  };
}"""


async def test_typing_shows_while_the_other_member_composes(server: LiveServer, tabs: Tabs) -> None:
    alice, bob = uid(), uid()
    session_id = await server.room(alice, bob)
    a, b = await tabs(), await tabs()
    await a.add_init_script(script=f"({TYPING_FRAMES})()")
    await open_as(a, server, alice, session_id)
    await open_as(b, server, bob, session_id)
    box, typing = a.get_by_label("Message"), b.locator("#typing")

    for text in ("h", "he", "hel"):  # one frame for the burst
        await box.fill(text)
    await expect(typing).to_have_text(f"{alice} is typing…")
    await expect(a.locator("#typing")).to_have_text("")  # not shown to the typist
    await box.fill("")  # cleared: no longer typing
    await expect(typing).to_have_text("")

    # Typing again within the server's 2 s gap: the page waits for its end instead of being dropped.
    await box.fill("hello")
    await expect(typing).to_have_text(f"{alice} is typing…")
    await box.press("Enter")
    await expect(shown(b, 1).locator(".body")).to_have_text("hello")
    await expect(typing).to_have_text("")
    assert await a.evaluate("window.typingSent") == [True, False, True, False]


async def test_online_dots_and_seen_by(server: LiveServer, tabs: Tabs) -> None:
    alice, bob = uid(), uid()
    session_id = await server.room(alice, bob)
    a = await tabs()
    await open_as(a, server, alice, session_id)
    await expect(dot(a, bob, "offline")).to_be_visible()
    for text in ("first", "second"):
        await a.get_by_label("Message").fill(text)
        await a.get_by_label("Message").press("Enter")
    await expect(shown(a, 2).locator(".body")).to_have_text("second")
    await expect(a.locator(".seen")).to_have_count(0)

    b = await tabs()
    await b.goto(f"{server.url}/#token={token(bob)}")  # opens his only session by itself, and reads it
    await expect(dot(a, bob, "online")).to_be_visible()
    await expect(shown(a, 2).locator(".seen")).to_have_text(f"Seen by {bob}")
    await expect(a.locator(".seen")).to_have_count(1)  # under alice's last message only
    await expect(b.locator(".seen")).to_have_count(0)  # bob wrote nothing

    await a.get_by_label("Message").fill("third")
    await a.get_by_label("Message").press("Enter")
    await expect(shown(a, 3).locator(".seen")).to_have_text(f"Seen by {bob}")  # bob's page shows it at once
    await expect(a.locator(".seen")).to_have_count(1)

    await b.close()
    await expect(dot(a, bob, "offline")).to_be_visible()
