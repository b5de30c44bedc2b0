"use strict";
// The imsvc chat page: plain JavaScript, no build step. User text only ever goes through textContent.

const BOT = "ai_bot";
const PALETTE = ["👍", "❤️", "😂", "🎉"]; // the reactions offered on every message
const PAGE = 50;
const NO_SEQ = 2147483647; // before_seq for a session whose last_seq we do not know yet
const TYPING_SHOWN_MS = 6000; // how long another member's "typing…" lasts without news (SPEC §12)
const TYPING_REFRESH_MS = 3000; // while composing, "still typing" goes out this often
const TYPING_GAP_MS = 2100; // the server forwards one "typing" per 2 s: sooner ones would be dropped
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
  messages: new Map(), // seq -> every event of the open session seen so far (dedup by seq)
  entries: new Map(), // message_id -> shown TEXT message {m, li, base, keys, ...}, folded as changes arrive
  changes: new Map(), // target message_id -> change rows whose target is not loaded yet
  pendingEdits: new Map(), // frame id -> entry whose edit awaits its answer
  highest: 0,
  oldest: null,
  replies: new Map(), // record_id -> {text, length, li, body}: streaming replies of the open session
  outbox: new Map(), // client_msg_id -> {frame, li}: sent, not yet acknowledged (resent after a reconnect)
  refreshTimer: null,
  connectedBefore: false,
  // The open session's details (SPEC §11): GET /sessions/{id}, kept current by events.
  detail: null, // the session object with `members`, or null while unknown (or not a member)
  detailRequest: 0,
  detailTimer: null,
  members: new Map(), // user_id -> member {user_id, role, last_read_seq, ...} of the open session
  settingsDirty: false, // the owner has typed into the settings form: events do not overwrite it
  // Presence and typing (SPEC §12).
  online: new Map(), // user_id -> bool, from members' `online` and `presence` frames
  presenceAt: new Map(), // user_id -> presenceTick of their last presence frame
  presenceTick: 0,
  typing: new Map(), // session_id -> Map(user_id -> timer): others typing
  typingOut: { session: null, shown: false, last: new Map(), timer: null }, // our own "typing" frames
  readTimer: null,
  readSent: 0, // the highest seq we have sent `read` for in the open session
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

const sessionPath = (id, rest = "") => `/sessions/${encodeURIComponent(id)}${rest}`;
const pageVisible = () => document.visibilityState === "visible";

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

// Changes are not queued while offline (unlike sends): they act on what is on screen now.
function sendChange(frame) {
  if (wsSend({ id: uuid(), ...frame })) return true;
  notice("Not connected: try again once the page is back online.");
  return false;
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
  $("hint").textContent = "Pick a session, start a new conversation, or type a session id to open one.";
  state.online.set(state.user, true);
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
    if (state.connectedBefore) {
      // The list, the members and their presence may have moved while we were away; so may our membership.
      const open = state.open;
      loadSessions().then(() => {
        if (open && state.open === open && state.canSync && !state.sessions.has(open)) {
          closeConversation("You are no longer a member of this conversation.");
        }
      });
      loadDetail();
    }
    state.connectedBefore = true;
    state.readSent = 0; // a read sent just before the drop may not have arrived
    state.typingOut.shown = false;
    catchUp();
    markReadSoon();
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
    for (const entry of state.pendingEdits.values()) unlockEditor(entry); // no answer is coming: Save again
    state.pendingEdits.clear();
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
    if (f.message?.session_id === state.open && !state.canSync) {
      state.canSync = true; // our first message created the session (or made us see it)
      loadDetailSoon();
    }
    addMessage(f.message); // a change's own row; or, when nothing changed, its target (already held)
    const edited = f.ref != null && state.pendingEdits.get(f.ref);
    if (edited) closeEditor(edited);
  },
  new_message(f) {
    // Our own removal (or leaving, from another device) comes live, and nothing of the session after it.
    // Only live: a sync may replay an old removal of ours that a later `added` undid.
    if (isOwnRemoval(f.message)) return leftSession(f.message.session_id, removalReason(f.message));
    if (isText(f.message)) setTyping(f.message.session_id, f.message.from_user_id, false); // it ends their "typing…"
    addMessage(f.message);
  },
  sync_result(f) {
    if (f.session_id !== state.open) return;
    // Rows come folded as of the read, which saw every row of this result: a target first received
    // here already includes the changes up to the result's last seq, which must not apply again.
    const base = f.messages.reduce((top, m) => Math.max(top, m.seq), 0);
    f.messages.forEach((m) => addMessage(m, null, base));
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
  read_marker(f) {
    const s = state.sessions.get(f.session_id);
    if (f.user_id === state.user && s && f.last_read_seq > s.last_read_seq) {
      // Read on another device of ours (or this one's answer): its badge clears here too.
      s.last_read_seq = f.last_read_seq;
      if (s.last_read_seq >= s.last_seq) s.unread = 0;
      else refreshSessionsSoon(); // read up to part of what we hold: the server counts the rest
      renderSessions();
    }
    if (f.session_id === state.open) {
      const member = state.members.get(f.user_id);
      if (member && f.last_read_seq > member.last_read_seq) {
        member.last_read_seq = f.last_read_seq;
        paintSeen();
      }
    }
  },
  typing(f) {
    if (f.user_id !== state.user) setTyping(f.session_id, f.user_id, f.active);
  },
  presence(f) {
    state.presenceAt.set(f.user_id, ++state.presenceTick);
    state.online.set(f.user_id, f.online);
    if (state.members.has(f.user_id)) renderMembers();
  },
  error(f) {
    const edited = f.ref != null && state.pendingEdits.get(f.ref);
    if (edited) {
      state.pendingEdits.delete(f.ref);
      unlockEditor(edited); // the box keeps the text, so nothing typed is lost
    }
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
    const fresh = new Map(sessions.map((s) => [s.session_id, s]));
    for (const [id, s] of fresh) {
      // The answer may predate events that arrived while it travelled: what they taught us stays.
      const known = state.sessions.get(id);
      if (!known) continue;
      if (known.last_seq > s.last_seq) {
        Object.assign(s, { last_seq: known.last_seq, last_message: known.last_message, unread: known.unread });
      }
      if (known.last_read_seq > s.last_read_seq) {
        s.last_read_seq = known.last_read_seq;
        if (s.last_read_seq >= s.last_seq) s.unread = 0;
      }
    }
    state.sessions = fresh;
    renderSessions();
    for (const entry of state.entries.values()) paint(entry); // our role decides who may delete what
  } catch (err) {
    notice(err.status === 401 ? "Your token was rejected; sign in again." : `Sessions: ${err.message}`);
  }
}

function renderSessions() {
  let total = 0;
  const items = [...state.sessions.values()].map((s, i) => {
    const button = el("button", "session");
    button.type = "button";
    button.setAttribute("aria-label", s.title || s.session_id);
    if (s.session_id === state.open) button.setAttribute("aria-current", "true");
    const lm = s.last_message;
    const last = lm ? `${lm.from_user_id}: ${lm.deleted ? "message deleted" : lm.msg_content}` : "No messages";
    const head = el("span", "head");
    head.append(el("span", "name", s.title || s.session_id));
    const described = [`session-last-${i}`];
    if (s.unread > 0) {
      total += s.unread;
      const badge = el("span", "unread", s.unread > 99 ? "99+" : String(s.unread));
      badge.append(el("span", "sr-only", " unread"));
      badge.id = `session-unread-${i}`;
      described.unshift(badge.id);
      head.append(badge);
    }
    const lastLine = el("span", "last", last);
    lastLine.id = `session-last-${i}`;
    button.append(head, lastLine);
    button.setAttribute("aria-describedby", described.join(" "));
    button.onclick = () => openSession(s.session_id);
    const li = el("li");
    li.append(button);
    return li;
  });
  $("sessions").replaceChildren(...items);
  document.title = total ? `(${total}) imsvc chat` : "imsvc chat";
  if (state.open) $("title").textContent = state.sessions.get(state.open)?.title || state.detail?.title || state.open;
}

function refreshSessionsSoon() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(loadSessions, 300);
}

// An event newer than what the list knows moves its session to the top. Its last message is the latest
// TEXT one, with later changes to it folded in; membership and settings events reload the list (role, title).
// Unread counts follow the same events: others' TEXT messages count unless we are looking at them (SPEC §12).
function noteSession(m) {
  const s = state.sessions.get(m.session_id);
  if (!s || m.msg_type === "MEMBER" || m.msg_type === "SETTINGS") refreshSessionsSoon();
  if (!s || m.seq <= s.last_seq) return;
  s.last_seq = m.seq;
  if (isText(m)) {
    s.last_message = { ...m, reactions: new Map() };
    if (m.from_user_id === state.user) {
      Object.assign(s, { last_read_seq: m.seq, unread: 0 }); // sending moves our marker to it
    } else if (!m.deleted && m.seq > s.last_read_seq && !viewingNewest(m.session_id)) {
      s.unread = (s.unread ?? 0) + 1;
    }
  } else {
    if (s.last_message?.message_id === m.target_message_id) {
      s.last_message.reactions = new Map(); // the list shows no reactions; foldInto needs a Map
      foldInto(s.last_message, m);
    }
    if (m.msg_type === "DELETE" && s.unread > 0) refreshSessionsSoon(); // perhaps an unread one: recount
    if (m.msg_type === "SETTINGS" && m.data) Object.assign(s, m.data); // the title, at once
  }
  state.sessions.delete(m.session_id);
  state.sessions = new Map([[m.session_id, s], ...state.sessions]);
  renderSessions();
}

function resetConversation(id) {
  stopTyping();
  clearTimeout(state.detailTimer);
  clearTimeout(state.readTimer);
  Object.assign(state, { open: id, canSync: false, highest: 0, oldest: null, detail: null, readSent: 0 });
  state.settingsDirty = false;
  state.detailRequest++; // an answer still on its way is for the previous session
  for (const map of [state.messages, state.entries, state.changes, state.pendingEdits, state.replies, state.members]) {
    map.clear();
  }
  $("messages").replaceChildren();
  $("older").hidden = true;
  $("details").hidden = true;
  updateStop();
  renderTyping();
}

async function openSession(id) {
  id = id.trim();
  if (!id) return;
  resetConversation(id);
  $("hint").textContent = "Loading…";
  for (const control of [$("message"), $("send")]) control.disabled = false;
  renderSessions();
  $("message").focus();
  loadDetail();
  const known = state.sessions.get(id);
  if ((await loadPage(known ? known.last_seq + 1 : NO_SEQ, true)) && state.open === id) {
    state.canSync = true;
    catchUp(); // fills anything newer than the page, and shows replies already running
    markReadSoon();
  }
}

// Leave the conversation view empty, saying why (we left, were removed, or are no longer a member).
function closeConversation(why) {
  resetConversation(null);
  $("title").textContent = "No session open";
  $("hint").textContent = why;
  for (const control of [$("message"), $("send")]) control.disabled = true;
  $("message").placeholder = "Enter sends, Shift+Enter adds a line";
  renderSessions();
}

async function newSession() {
  try {
    const s = await api("/sessions", { method: "POST", body: JSON.stringify({}) });
    state.sessions = new Map([[s.session_id, s], ...state.sessions]);
    openSession(s.session_id);
  } catch (err) {
    notice(`New conversation: ${err.message}`);
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
    // TEXT rows, folded as of the read; that read saw every row of the page, so it is at least this late.
    const base = page.messages.reduce((top, m) => Math.max(top, m.seq), 0);
    page.messages.forEach((m) => addMessage(m, null, base));
    $("older").hidden = !page.has_more;
    if (first) list.scrollTop = list.scrollHeight;
    else list.scrollTop += list.scrollHeight - height; // keep the view where it was
    $("hint").textContent = state.entries.size ? "" : "No messages yet.";
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

// ---- events: messages and the changes folded into them (SPEC §10) ----

const isText = (m) => (m.msg_type ?? "TEXT") === "TEXT";
const reactionMap = (reactions) => new Map(Object.entries(reactions ?? {})); // any string is a key, even "__proto__"

// Apply one change row to a message. Reactions are a set per emoji, so applying a change again is harmless.
function foldInto(t, row) {
  switch (row.msg_type) {
    case "EDIT":
      t.msg_content = row.msg_content;
      t.edited_at = row.created_at;
      return true;
    case "DELETE":
      Object.assign(t, { msg_content: "", deleted: true, reactions: new Map() });
      return true;
    case "REACT": {
      const users = t.reactions.get(row.msg_content) ?? [];
      if (!users.includes(row.from_user_id)) t.reactions.set(row.msg_content, [...users, row.from_user_id]);
      return true;
    }
    case "UNREACT": {
      const users = (t.reactions.get(row.msg_content) ?? []).filter((u) => u !== row.from_user_id);
      if (users.length) t.reactions.set(row.msg_content, users);
      else t.reactions.delete(row.msg_content);
      return true;
    }
    default:
      return false;
  }
}

// A change is applied once, in seq order per thing it sets (the text; one user's one emoji): a live
// event may arrive before an older one that a sync fills in. `entry.base`: changes up to that seq are
// already folded into the row as it was read. A deleted message takes no more changes.
function apply(entry, row) {
  if (row.seq <= entry.base || entry.m.deleted) return false;
  const key = row.msg_type === "REACT" || row.msg_type === "UNREACT" ? `${row.from_user_id}\n${row.msg_content}` : row.msg_type;
  if (row.seq <= (entry.keys.get(key) ?? 0)) return false;
  entry.keys.set(key, row.seq);
  return foldInto(entry.m, row);
}

// Events are kept by seq: a seq already seen is never applied again. `base` is the highest seq whose
// changes the row already includes: its own seq when it arrives alone, more when it was read later.
function addMessage(m, note = null, base = m?.seq) {
  if (!m) return;
  noteSession(m);
  if (m.session_id !== state.open || state.messages.has(m.seq)) return;
  state.messages.set(m.seq, m);
  state.highest = Math.max(state.highest, m.seq);
  if (isText(m)) {
    addEntry(m, note, base);
    const member = state.members.get(m.from_user_id);
    if (member && m.seq > member.last_read_seq) member.last_read_seq = m.seq; // sending moves a marker too
    paintSeen();
  } else if (m.target_message_id) addChange(m);
  // MEMBER and SETTINGS rows are not drawn: history (TEXT rows only) could not show them after a reload.
  // They change the members panel and the settings: read those again.
  else if (m.msg_type === "MEMBER" || m.msg_type === "SETTINGS") loadDetailSoon();
  markReadSoon();
}

function addChange(row) {
  const entry = state.entries.get(row.target_message_id);
  if (!entry) {
    // Its target is not loaded (yet): keep the change for when an older page brings it.
    const rows = state.changes.get(row.target_message_id) ?? [];
    state.changes.set(row.target_message_id, [...rows, row]);
    return;
  }
  const stick = nearBottom();
  if (apply(entry, row)) paint(entry);
  if (row.msg_type === "DELETE") paintSeen(); // "seen by" goes with our last message that is not deleted
  if (stick) scrollDown();
}

function addEntry(message, note, base) {
  const m = { ...message, reactions: reactionMap(message.reactions) };
  state.oldest = state.oldest == null ? m.seq : Math.min(state.oldest, m.seq);
  const li = bubble(m.from_user_id, m.created_at, note, m.msg_content);
  li.dataset.seq = m.seq;
  const body = li.querySelector(".body");
  body.id = `body-${m.seq}`;
  const edited = el("span", "edited", "(edited)");
  li.querySelector(".meta").append(edited);
  const reactions = el("div", "reactions");
  reactions.setAttribute("role", "group");
  reactions.setAttribute("aria-label", "Reactions");
  const actions = el("div", "actions");
  const footer = el("div", "footer");
  footer.append(reactions, actions);
  li.append(footer);
  const entry = { m, li, body, edited, footer, reactions, base, keys: new Map(), chips: new Map(), editor: null };
  entry.editButton = action(entry, "Edit", () => startEdit(entry));
  entry.deleteButton = action(entry, "Delete", () => deleteMessage(entry));
  actions.append(entry.editButton, entry.deleteButton);
  state.entries.set(m.message_id, entry);
  for (const row of (state.changes.get(m.message_id) ?? []).sort((a, b) => a.seq - b.seq)) apply(entry, row);
  state.changes.delete(m.message_id);
  paint(entry);

  const list = $("messages");
  // Before the first later message; unsequenced bubbles (streaming, sending) stay at the end.
  const next = [...list.children].find((c) => !c.dataset.seq || Number(c.dataset.seq) > m.seq);
  const stick = nearBottom();
  list.insertBefore(li, next || null);
  if (stick) scrollDown();
  $("hint").textContent = "";
}

function action(entry, label, onclick) {
  const button = el("button", "action", label);
  button.type = "button";
  button.setAttribute("aria-describedby", entry.body.id); // "Edit", described by the message's text
  button.addEventListener("click", onclick);
  return button;
}

// Bring a message's bubble up to date with its (folded) state and with what we may do to it.
function paint(entry) {
  const { m, li } = entry;
  const deleted = Boolean(m.deleted);
  li.classList.toggle("deleted", deleted);
  entry.body.textContent = deleted ? "message deleted" : m.msg_content;
  entry.edited.hidden = deleted || !m.edited_at;
  if (m.edited_at) entry.edited.title = `Edited ${new Date(m.edited_at).toLocaleString()}`;
  entry.footer.hidden = deleted;
  paintReactions(entry); // a tombstone's are cleared too, not just hidden
  if (deleted) return closeEditor(entry);
  const mine = m.from_user_id === state.user && m.from_user_id !== BOT;
  const owner = state.sessions.get(m.session_id)?.role === "owner";
  entry.body.hidden = entry.editor != null;
  entry.editButton.hidden = !mine || entry.editor != null;
  entry.deleteButton.hidden = !(mine || owner);
}

// One toggle per emoji: the palette, then any other emoji in use. Buttons are updated in place (never
// rebuilt or moved), so keyboard focus stays where it was.
function paintReactions(entry) {
  const reactions = entry.m.reactions;
  for (const [emoji, chip] of entry.chips) {
    if (!PALETTE.includes(emoji) && !reactions.has(emoji)) {
      chip.remove();
      entry.chips.delete(emoji);
    }
  }
  for (const emoji of new Set([...PALETTE, ...reactions.keys()])) {
    let chip = entry.chips.get(emoji);
    if (!chip) {
      chip = reactionButton(entry, emoji);
      entry.chips.set(emoji, chip);
      entry.reactions.append(chip);
    }
    const users = reactions.get(emoji) ?? [];
    chip.setAttribute("aria-pressed", String(users.includes(state.user)));
    chip.classList.toggle("used", users.length > 0);
    chip.querySelector(".count").textContent = users.length ? String(users.length) : "";
    chip.title = users.length ? users.join(", ") : `React with ${emoji}`;
  }
}

function reactionButton(entry, emoji) {
  const chip = el("button", "reaction");
  chip.type = "button";
  chip.setAttribute("aria-label", `React ${emoji}`);
  chip.append(el("span", "emoji", emoji), el("span", "count"));
  chip.addEventListener("click", () => {
    const mine = (entry.m.reactions.get(emoji) ?? []).includes(state.user);
    sendChange({ type: mine ? "unreact" : "react", message_id: entry.m.message_id, emoji });
  });
  return chip;
}

function deleteMessage(entry) {
  const whose = entry.m.from_user_id === state.user ? "your message" : `this message of ${entry.m.from_user_id}`;
  if (confirm(`Delete ${whose} for everyone?`)) sendChange({ type: "delete_message", message_id: entry.m.message_id });
}

// ---- editing in place: Enter or Save sends, Escape or Cancel leaves; the box stays until the answer ----

function startEdit(entry) {
  if (entry.editor) return entry.editor.box.focus();
  const form = el("form", "editor");
  const box = el("textarea");
  box.value = entry.m.msg_content;
  box.rows = Math.min(8, box.value.split("\n").length + 1);
  box.maxLength = 5000;
  box.setAttribute("aria-label", "Edit message");
  const save = el("button", null, "Save");
  save.type = "submit";
  const cancel = el("button", "secondary", "Cancel");
  cancel.type = "button";
  const row = el("div", "row");
  row.append(save, cancel);
  form.append(box, row);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit(entry);
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      closeEditor(entry);
    }
  });
  cancel.addEventListener("click", () => closeEditor(entry));
  entry.editor = { form, box, save, ref: null };
  entry.body.after(form);
  paint(entry);
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

function saveEdit(entry) {
  const editor = entry.editor;
  if (!editor || editor.ref) return;
  const content = editor.box.value;
  if (!content.trim()) return notice("A message cannot be empty: use Delete to remove it.");
  if (content === entry.m.msg_content) return closeEditor(entry); // nothing to change
  const id = uuid();
  if (!sendChange({ type: "edit_message", id, message_id: entry.m.message_id, content })) return;
  editor.ref = id;
  state.pendingEdits.set(id, entry);
  editor.box.readOnly = true;
  editor.save.disabled = true;
}

function unlockEditor(entry) {
  const editor = entry.editor;
  if (!editor) return;
  editor.ref = null;
  editor.box.readOnly = false;
  editor.save.disabled = false;
}

function closeEditor(entry) {
  const editor = entry.editor;
  if (!editor) return;
  if (editor.ref) state.pendingEdits.delete(editor.ref);
  const hadFocus = editor.form.contains(document.activeElement);
  editor.form.remove();
  entry.editor = null;
  paint(entry);
  if (hadFocus) (entry.footer.hidden || entry.editButton.hidden ? $("messages") : entry.editButton).focus();
}

// ---- streaming replies ----

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
  stopTyping();
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

// ---- read markers and unread counts (SPEC §12) ----

// We read what the conversation shows: its newest message is in view, and the page is visible.
function viewingNewest(sessionId) {
  return sessionId === state.open && state.canSync && pageVisible() && nearBottom();
}

// One `read` frame for a burst of events (a sync, a reply); only forward of what the server knows.
function markReadSoon() {
  clearTimeout(state.readTimer);
  state.readTimer = setTimeout(markRead, 150);
}

function markRead() {
  const id = state.open;
  if (!id || !viewingNewest(id)) return;
  const s = state.sessions.get(id);
  const seq = state.highest;
  if (seq <= Math.max(s?.last_read_seq ?? 0, state.readSent)) return;
  if (!wsSend({ type: "read", id: uuid(), session_id: id, seq })) return; // sent after the reconnect
  state.readSent = seq;
  if (s) {
    Object.assign(s, { last_read_seq: seq, unread: 0 });
    renderSessions();
  }
}

// "Seen by": under our last (not deleted) message, the other members whose marker reached it.
function paintSeen() {
  let last = null;
  for (const entry of state.entries.values()) {
    if (entry.m.from_user_id === state.user && !entry.m.deleted && (!last || entry.m.seq > last.m.seq)) last = entry;
  }
  const who = last
    ? [...state.members.values()]
        .filter((u) => u.user_id !== state.user && u.user_id !== BOT && u.last_read_seq >= last.m.seq)
        .map((u) => u.user_id)
    : [];
  state.seen ??= el("p", "seen");
  if (!who.length) return state.seen.remove();
  state.seen.textContent = `Seen by ${who.join(", ")}`;
  if (state.seen.parentNode !== last.li) {
    const stick = nearBottom();
    last.li.append(state.seen);
    if (stick) scrollDown();
  }
}

// ---- typing (SPEC §12) ----

function setTyping(sessionId, userId, active) {
  let users = state.typing.get(sessionId);
  if (!users) {
    if (!active) return;
    users = new Map();
    state.typing.set(sessionId, users);
  }
  clearTimeout(users.get(userId));
  if (active) {
    users.set(userId, setTimeout(() => setTyping(sessionId, userId, false), TYPING_SHOWN_MS));
  } else {
    if (!users.has(userId)) return;
    users.delete(userId);
    if (!users.size) state.typing.delete(sessionId);
  }
  if (sessionId === state.open) renderTyping();
}

function renderTyping() {
  const names = [...(state.typing.get(state.open)?.keys() ?? [])];
  $("typing").textContent =
    names.length === 0
      ? ""
      : names.length === 1
        ? `${names[0]} is typing…`
        : names.length === 2
          ? `${names[0]} and ${names[1]} are typing…`
          : `${names.length} people are typing…`;
}

// While the box has text: "typing" now, then again every few seconds; never sooner than the server
// forwards one (a "typing" right after a send waits for the end of that gap instead of being dropped).
function composing() {
  const out = state.typingOut;
  if (!$("message").value) return stopTyping();
  const id = state.open;
  if (!id || !state.canSync) return; // not a member (yet): the server would refuse it
  if (out.session !== id) stopTyping();
  const now = Date.now();
  const last = out.last.get(id) ?? 0;
  if (out.shown && out.session === id && now - last < TYPING_REFRESH_MS) return;
  if (now - last < TYPING_GAP_MS) {
    out.timer ??= setTimeout(() => {
      out.timer = null;
      if (state.open === id) composing();
    }, last + TYPING_GAP_MS - now);
    return;
  }
  if (wsSend({ type: "typing", session_id: id, active: true })) {
    Object.assign(out, { session: id, shown: true });
    out.last.set(id, now);
  }
}

function stopTyping() {
  const out = state.typingOut;
  clearTimeout(out.timer);
  out.timer = null;
  if (out.shown) wsSend({ type: "typing", session_id: out.session, active: false });
  out.shown = false;
}

// ---- members and settings of the open session (SPEC §11) ----

function loadDetailSoon() {
  clearTimeout(state.detailTimer);
  state.detailTimer = setTimeout(loadDetail, 200);
}

async function loadDetail() {
  const id = state.open;
  if (!id) return;
  const request = ++state.detailRequest;
  const tick = state.presenceTick;
  let detail;
  try {
    detail = await api(sessionPath(id));
  } catch (err) {
    if (request !== state.detailRequest) return;
    if (err.status === 403) {
      state.detail = null;
      $("details").hidden = true; // not a member (yet)
    } else notice(`Members: ${err.message}`);
    return;
  }
  if (request !== state.detailRequest || state.open !== id) return;
  state.detail = detail;
  const before = state.members;
  state.members = new Map(
    detail.members.map((m) => {
      // Markers only move forward: a read_marker that overtook this answer stays.
      const seen = Math.max(m.last_read_seq, before.get(m.user_id)?.last_read_seq ?? 0);
      return [m.user_id, { ...m, last_read_seq: seen }];
    }),
  );
  for (const m of detail.members) {
    if ((state.presenceAt.get(m.user_id) ?? 0) <= tick) state.online.set(m.user_id, m.online);
  }
  state.online.set(state.user, true);
  const s = state.sessions.get(id);
  if (s && s.role !== detail.role) {
    s.role = detail.role;
    for (const entry of state.entries.values()) paint(entry); // who may delete what
  }
  renderDetails();
  paintSeen();
}

function renderDetails() {
  const d = state.detail;
  $("details").hidden = !d;
  if (!d) return;
  renderMembers();
  fillSettings();
  const mention = d.ai_enabled && d.ai_trigger === "mention";
  $("message").placeholder = mention
    ? `The assistant answers when mentioned (@${BOT}). Enter sends.`
    : "Enter sends, Shift+Enter adds a line";
  renderSessions(); // the title
}

function renderMembers() {
  const d = state.detail;
  if (!d) return;
  const owner = d.role === "owner";
  const items = [...state.members.values()].map((m) => {
    const li = el("li", "member");
    const online = state.online.get(m.user_id) ?? m.online;
    const dot = el("span", online ? "dot online" : "dot");
    dot.setAttribute("role", "img");
    dot.setAttribute("aria-label", online ? "online" : "offline");
    dot.title = online ? "online" : "offline";
    li.append(dot, el("span", "name", m.user_id === state.user ? `${m.user_id} (you)` : m.user_id));
    if (m.role === "owner") li.append(el("span", "role", "owner"));
    if (owner && m.user_id !== state.user) {
      const remove = el("button", "action", "Remove");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${m.user_id}`);
      remove.addEventListener("click", () => removeMember(m.user_id));
      li.append(remove);
    }
    return li;
  });
  $("members").replaceChildren(...items);
}

// The form shows the session's settings, unless the owner is in the middle of changing them.
function fillSettings(force = false) {
  const d = state.detail;
  if (!d) return;
  const owner = d.role === "owner";
  const ownerId = d.members?.find((m) => m.role === "owner")?.user_id;
  $("settings-fields").disabled = !owner;
  $("save-settings").hidden = !owner;
  $("settings-note").textContent = owner ? "" : `Only the owner${ownerId ? ` (${ownerId})` : ""} changes these.`;
  if (state.settingsDirty && !force) return;
  $("set-title").value = d.title ?? "";
  $("set-ai").checked = d.ai_enabled;
  $("set-trigger").value = d.ai_trigger;
  $("set-prompt").value = d.ai_system_prompt ?? "";
  $("set-model").value = d.ai_model ?? "";
}

async function saveSettings(event) {
  event.preventDefault();
  const id = state.open;
  const d = state.detail;
  if (!id || !d) return;
  const wanted = {
    title: $("set-title").value.trim() || null,
    ai_enabled: $("set-ai").checked,
    ai_trigger: $("set-trigger").value,
    ai_system_prompt: $("set-prompt").value.trim() ? $("set-prompt").value : null, // empty: the server's default
    ai_model: $("set-model").value.trim() || null,
  };
  const body = Object.fromEntries(Object.entries(wanted).filter(([key, value]) => value !== (d[key] ?? null)));
  $("settings-saved").textContent = "";
  if (!Object.keys(body).length) {
    state.settingsDirty = false;
    $("settings-saved").textContent = "Nothing to change.";
    return;
  }
  $("save-settings").disabled = true;
  try {
    const saved = await api(sessionPath(id), { method: "PATCH", body: JSON.stringify(body) });
    const s = state.sessions.get(id);
    if (s) Object.assign(s, saved, { last_message: s.last_message, last_seq: Math.max(s.last_seq, saved.last_seq) });
    if (state.open === id && state.detail) {
      Object.assign(state.detail, saved);
      state.settingsDirty = false;
      renderDetails();
      $("settings-saved").textContent = "Saved.";
    }
  } catch (err) {
    notice(`Settings: ${err.message}`); // the form keeps what was typed
  } finally {
    $("save-settings").disabled = false;
  }
}

async function addMember(event) {
  event.preventDefault();
  const id = state.open;
  const userId = $("member-id").value.trim();
  if (!id || !userId) return;
  if (state.members.has(userId)) return notice(`${userId} is a member already.`);
  try {
    await api(sessionPath(id, "/members"), { method: "POST", body: JSON.stringify({ user_id: userId }) });
    $("member-id").value = "";
    if (state.open === id) loadDetail();
  } catch (err) {
    notice(`Add member: ${err.message}`);
  }
}

async function removeMember(userId) {
  const id = state.open;
  try {
    await api(sessionPath(id, `/members/${encodeURIComponent(userId)}`), { method: "DELETE" });
    if (state.open === id) loadDetail();
  } catch (err) {
    notice(`Remove ${userId}: ${err.message}`);
  }
}

async function leave() {
  const id = state.open;
  const d = state.detail;
  if (!id || !d) return;
  const heir = [...state.members.values()].find((m) => m.user_id !== state.user)?.user_id;
  const handOver = d.role === "owner" && heir ? ` ${heir} becomes its owner.` : "";
  if (!confirm(`Leave this conversation?${handOver} You can only come back if a member adds you.`)) return;
  try {
    await api(sessionPath(id, `/members/${encodeURIComponent(state.user)}`), { method: "DELETE" });
    leftSession(id, "You left this conversation.");
  } catch (err) {
    notice(`Leave: ${err.message}`);
  }
}

const isOwnRemoval = (m) =>
  m?.msg_type === "MEMBER" &&
  m.data?.user_id === state.user &&
  (m.data.action === "removed" || m.data.action === "left");

function removalReason(m) {
  return m.data.action === "left" ? "You left this conversation." : `${m.from_user_id} removed you from this conversation.`;
}

function leftSession(sessionId, why) {
  if (state.typingOut.session === sessionId) state.typingOut.shown = false; // no frames to a session we left
  state.sessions.delete(sessionId);
  for (const timer of state.typing.get(sessionId)?.values() ?? []) clearTimeout(timer);
  state.typing.delete(sessionId);
  if (state.open === sessionId) closeConversation(why);
  else renderSessions();
  refreshSessionsSoon();
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
  $("message").addEventListener("input", composing);
  $("new-session").addEventListener("click", newSession);
  $("add-member").addEventListener("submit", addMember);
  $("leave").addEventListener("click", leave);
  $("settings").addEventListener("submit", saveSettings);
  $("settings").addEventListener("input", () => {
    state.settingsDirty = true;
    $("settings-saved").textContent = "";
  });
  document.addEventListener("visibilitychange", markReadSoon);
  window.addEventListener("focus", markReadSoon);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("older").addEventListener("click", loadOlder);
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop === 0) loadOlder();
    if (nearBottom()) markReadSoon();
  });
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
