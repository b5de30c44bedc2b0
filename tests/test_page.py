"""The chat page (SPEC §8) in a real headless Chromium: sign in, send, stream, history, fragment mode, Stop;
edits, deletes and reactions (SPEC §10), live between two users and after a reconnect or a reload."""

from __future__ import annotations

import json
import os
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
