"use strict";
// The imsvc chat page: plain JavaScript, no build step. User text only ever goes through textContent.

const BOT = "ai_bot";
const PAGE = 50;
const NO_SEQ = 2147483647; // before_seq for a session whose last_seq we do not know yet
const $ = (id) => document.getElementById(id);
const codePoints = (text) => Array.from(text).length;

const state = {
  token: null,
  user: null,
  ws: null,
  backoff: 500,
  retryTimer: null,
  sessions: new Map(), // session_id -> session object, most recently active first
  open: null, // the open session's id
  canSync: false, // the open session's history is loaded (and we are a member)
  loading: false,
  messages: new Map(), // seq -> message of the open session
  highest: 0,
  oldest: null,
  replies: new Map(), // record_id -> {text, length, li, body}: streaming replies of the open session
  outbox: new Map(), // client_msg_id -> {frame, li}: sent, not yet acknowledged (resent after a reconnect)
  refreshTimer: null,
  connectedBefore: false,
};

// ---- small helpers ----

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function tokenUser(token) {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;
  } catch {
    return null;
  }
}

function formatTime(iso) {
  const d = new Date(iso);
  return d.toDateString() === new Date().toDateString()
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

let noticeTimer = null;
function notice(text) {
  $("notice").textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => ($("notice").textContent = ""), 8000);
}

function setStatus(text, online = false) {
  $("status").textContent = text;
  $("status").classList.toggle("online", online);
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (options.body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { ...options, headers });
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const error = new Error(body?.error?.message || `${res.status} ${res.statusText}`);
    error.status = res.status;
    throw error;
  }
  return body;
}

function wsSend(frame) {
  if (state.ws?.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

// ---- signing in ----

async function signIn(event) {
  event.preventDefault();
  const userId = $("user-name").value.trim();
  try {
    const res = await fetch("/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: userId }),
    });
    if (res.status === 404) return notice("Signing in by name needs dev mode; open this page with #token=… instead.");
    const body = await res.json().catch(() => null);
    if (!res.ok) return notice(body?.error?.message || "Sign-in failed");
    try {
      localStorage.setItem("imsvc.user", userId);
    } catch {}
    $("sign-out").hidden = false;
    start(body.token, new URLSearchParams(location.hash.slice(1)).get("session"));
  } catch (err) {
    notice(`Sign-in failed: ${err.message}`);
  }
}

function start(token, session) {
  state.token = token;
  state.user = tokenUser(token);
  $("login").hidden = true;
  $("chat").hidden = false;
  $("whoami").textContent = state.user ? `Signed in as ${state.user}` : "";
  $("hint").textContent = "Pick a session, or type a session id to open or start one.";
  connect();
  if (session) openSession(session);
  loadSessions().then(() => {
    if (!state.open && state.sessions.size) openSession(state.sessions.keys().next().value);
  });
}

// ---- the socket: connect, reconnect with backoff, catch up ----

function connect() {
  clearTimeout(state.retryTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  setStatus("Connecting…");
  ws.onopen = () => {
    state.backoff = 500;
    setStatus("Connected", true);
    if (state.connectedBefore) loadSessions(); // the list may have moved while we were away
    state.connectedBefore = true;
    catchUp();
    for (const { frame } of state.outbox.values()) wsSend(frame); // idempotent: same client_msg_id
  };
  ws.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    handlers[frame.type]?.(frame);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (event.code === 4401 || event.code === 4403) {
      setStatus(`Disconnected: ${event.reason || "the token was rejected"}`);
      return;
    }
    setStatus(`Disconnected, retrying in ${state.backoff / 1000} s`);
    state.retryTimer = setTimeout(connect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 5000);
  };
}

// Ask for everything after the highest seq seen; running replies come back as snapshots.
function catchUp() {
  if (!state.open || !state.canSync || state.ws?.readyState !== WebSocket.OPEN) return;
  for (const id of [...state.replies.keys()]) dropReply(id);
  sync();
}

function sync() {
  if (state.canSync) wsSend({ type: "sync", id: uuid(), session_id: state.open, after_seq: state.highest });
}

const handlers = {
  message_sent(f) {
    const pending = state.outbox.get(f.client_msg_id ?? f.message?.client_msg_id);
    if (pending) {
      pending.li.remove();
      state.outbox.delete(pending.frame.client_msg_id);
    }
    if (f.message?.session_id === state.open) state.canSync = true;
    addMessage(f.message);
  },
  new_message: (f) => addMessage(f.message),
  sync_result(f) {
    if (f.session_id !== state.open) return;
    f.messages.forEach((m) => addMessage(m));
    if (f.has_more) sync();
  },
  ai_reply_start(f) {
    if (f.session_id === state.open) reply(f.record_id);
  },
  ai_reply_delta(f) {
    if (f.session_id !== state.open) return;
    const r = reply(f.record_id);
    const delta = Array.from(f.delta);
    if (f.offset > r.length || f.offset + delta.length <= r.length) return; // a gap (the final fixes it) or overlap
    r.text += delta.slice(r.length - f.offset).join("");
    r.length = f.offset + delta.length;
    drawReply(r);
  },
  ai_reply_snapshot(f) {
    if (f.session_id !== state.open) return;
    const r = reply(f.record_id);
    r.text = f.content;
    r.length = codePoints(f.content);
    drawReply(r);
  },
  ai_reply(f) {
    const stopped = f.finish_reason === "cancelled";
    endReply(f, stopped ? "stopped" : null, stopped ? "The reply was stopped before any text." : null);
  },
  ai_reply_error(f) {
    const why = f.error?.message || f.error?.code || "error";
    endReply(f, `failed: ${why}`, `The AI reply failed: ${why}`);
  },
  error(f) {
    const pending = f.ref != null && state.outbox.get(f.ref);
    if (pending) {
      pending.li.remove();
      state.outbox.delete(f.ref);
      if (!$("message").value) $("message").value = pending.frame.content;
    }
    notice(f.message || f.code);
  },
};

// ---- sessions ----

async function loadSessions() {
  try {
    const { sessions } = await api("/sessions");
    state.sessions = new Map(sessions.map((s) => [s.session_id, s]));
    renderSessions();
  } catch (err) {
    notice(err.status === 401 ? "Your token was rejected; sign in again." : `Sessions: ${err.message}`);
  }
}

function renderSessions() {
  const items = [...state.sessions.values()].map((s, i) => {
    const button = el("button", "session");
    button.type = "button";
    button.setAttribute("aria-label", s.title || s.session_id);
    button.setAttribute("aria-describedby", `session-last-${i}`);
    if (s.session_id === state.open) button.setAttribute("aria-current", "true");
    const last = s.last_message ? `${s.last_message.from_user_id}: ${s.last_message.msg_content}` : "No messages";
    button.append(el("span", "name", s.title || s.session_id), el("span", "last", last));
    button.lastChild.id = `session-last-${i}`;
    button.onclick = () => openSession(s.session_id);
    const li = el("li");
    li.append(button);
    return li;
  });
  $("sessions").replaceChildren(...items);
  if (state.open) $("title").textContent = state.sessions.get(state.open)?.title || state.open;
}

// A message newer than what the list knows moves its session to the top.
function noteSession(m) {
  const s = state.sessions.get(m.session_id);
  if (!s) {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(loadSessions, 300);
    return;
  }
  if (m.seq <= s.last_seq) return;
  Object.assign(s, { last_seq: m.seq, last_message: m });
  state.sessions.delete(m.session_id);
  state.sessions = new Map([[m.session_id, s], ...state.sessions]);
  renderSessions();
}

async function openSession(id) {
  id = id.trim();
  if (!id) return;
  Object.assign(state, { open: id, canSync: false, highest: 0, oldest: null });
  state.messages.clear();
  state.replies.clear();
  $("messages").replaceChildren();
  $("older").hidden = true;
  $("hint").textContent = "Loading…";
  for (const control of [$("message"), $("send")]) control.disabled = false;
  updateStop();
  renderSessions();
  $("message").focus();
  const known = state.sessions.get(id);
  if ((await loadPage(known ? known.last_seq + 1 : NO_SEQ, true)) && state.open === id) {
    state.canSync = true;
    catchUp(); // fills anything newer than the page, and shows replies already running
  }
}

async function loadPage(beforeSeq, first = false) {
  const id = state.open;
  const list = $("messages");
  state.loading = true;
  try {
    const query = new URLSearchParams({ session_id: id, before_seq: beforeSeq, limit: PAGE });
    const page = await api(`/message/list?${query}`);
    if (state.open !== id) return false;
    const height = list.scrollHeight;
    page.messages.forEach((m) => addMessage(m));
    $("older").hidden = !page.has_more;
    if (first) list.scrollTop = list.scrollHeight;
    else list.scrollTop += list.scrollHeight - height; // keep the view where it was
    $("hint").textContent = state.messages.size ? "" : "No messages yet.";
    return true;
  } catch (err) {
    if (state.open !== id) return false;
    $("hint").textContent =
      err.status === 403 ? `No session “${id}” of yours yet: send a message to start it.` : `History: ${err.message}`;
    return false;
  } finally {
    state.loading = false;
  }
}

function loadOlder() {
  if (!$("older").hidden && !state.loading && state.oldest != null) loadPage(state.oldest);
}

// ---- messages and replies ----

function meta(author, createdAt, note) {
  const head = el("div", "meta");
  head.append(el("span", "author", author));
  if (createdAt) {
    const time = el("time", null, formatTime(createdAt));
    time.dateTime = createdAt;
    time.title = new Date(createdAt).toLocaleString();
    head.append(time);
  }
  if (note) head.append(el("span", "note", note));
  return head;
}

function bubble(author, createdAt, note, text) {
  const li = el("li", "msg");
  li.classList.toggle("mine", author === state.user);
  li.classList.toggle("bot", author === BOT);
  li.append(meta(author, createdAt, note), el("div", "body", text));
  return li;
}

function nearBottom() {
  const list = $("messages");
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function scrollDown() {
  $("messages").scrollTop = $("messages").scrollHeight;
}

// Messages are kept by seq: a seq already shown is never shown again.
function addMessage(m, note = null) {
  if (!m) return;
  noteSession(m);
  if (m.session_id !== state.open || state.messages.has(m.seq)) return;
  state.messages.set(m.seq, m);
  state.highest = Math.max(state.highest, m.seq);
  state.oldest = state.oldest == null ? m.seq : Math.min(state.oldest, m.seq);
  const li = bubble(m.from_user_id, m.created_at, note, m.msg_content);
  li.dataset.seq = m.seq;
  const list = $("messages");
  // Before the first later message; unsequenced bubbles (streaming, sending) stay at the end.
  const next = [...list.children].find((c) => !c.dataset.seq || Number(c.dataset.seq) > m.seq);
  const stick = nearBottom();
  list.insertBefore(li, next || null);
  if (stick) scrollDown();
  $("hint").textContent = "";
}

function reply(recordId) {
  let r = state.replies.get(recordId);
  if (!r) {
    const li = bubble(BOT, null, "writing…", "");
    li.classList.add("streaming");
    li.dataset.record = recordId;
    r = { text: "", length: 0, li, body: li.querySelector(".body") };
    state.replies.set(recordId, r);
    const stick = nearBottom();
    $("messages").append(li);
    if (stick) scrollDown();
    updateStop();
  }
  return r;
}

function drawReply(r) {
  const stick = nearBottom();
  r.body.textContent = r.text;
  if (stick) scrollDown();
}

function dropReply(recordId) {
  state.replies.get(recordId)?.li.remove();
  state.replies.delete(recordId);
  updateStop();
}

function endReply(f, note, noTextNotice) {
  if (f.session_id === state.open) dropReply(f.record_id);
  if (f.message) addMessage(f.message, note);
  else if (f.session_id === state.open && noTextNotice) notice(noTextNotice);
}

function updateStop() {
  $("stop").hidden = state.replies.size === 0;
  $("stop").disabled = [...state.replies.values()].every((r) => r.cancelled);
}

// ---- composing ----

function send(event) {
  event.preventDefault();
  const box = $("message");
  const content = box.value;
  if (!content.trim() || !state.open) return;
  const clientMsgId = uuid();
  const frame = { type: "send_message", id: clientMsgId, session_id: state.open, content, client_msg_id: clientMsgId };
  const li = bubble(state.user, null, "sending…", content);
  li.classList.add("pending");
  $("messages").append(li);
  scrollDown();
  state.outbox.set(clientMsgId, { frame, li });
  wsSend(frame); // when offline, it goes out after the reconnect
  box.value = "";
  box.focus();
}

function stop() {
  for (const [recordId, r] of state.replies) {
    if (!r.cancelled && wsSend({ type: "ai_cancel", id: uuid(), record_id: recordId })) r.cancelled = true;
  }
  updateStop();
}

// ---- start ----

function boot() {
  $("login").addEventListener("submit", signIn);
  $("open-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openSession($("session-id").value);
    $("session-id").value = "";
  });
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("older").addEventListener("click", loadOlder);
  $("messages").addEventListener("scroll", () => $("messages").scrollTop === 0 && loadOlder());
  $("sign-out").addEventListener("click", () => location.reload());

  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) return start(fragment.get("token"), fragment.get("session"));
  $("login").hidden = false;
  try {
    $("user-name").value = localStorage.getItem("imsvc.user") || "";
  } catch {}
  $("user-name").focus();
}

boot();
