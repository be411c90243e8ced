// The demo chat page: pick a demo user, then chat in the seeded workspace.
//
// Everything here is what an app built on ocomms-rt does (see docs/protocol.md): CONNECT with
// `{token, workspaceId}`, `message:history` when a room opens, `message:send` with a
// `clientMsgId` (so a send retried after a reconnect is stored once), `typing:start/stop`,
// `presence:setAway/setActive` when the tab is hidden or shown, `presence:query` for the
// people list, and after a reconnect that was not recovered, `message:history {afterSequence}`
// for every open room to fill the gap. The demo roster and sign-in (`/demo/api/...`) stand in
// for the web app that would normally hand out the session token.

import { Socket } from "/assets/socket.js";

const $ = (id) => document.getElementById(id);
const STORAGE = "ocomms-demo-session"; // per tab: two tabs can be two users
const HISTORY_PAGE = 50;
const TYPING_REFRESH_MS = 3000; // re-send typing:start while typing (the server forgets after 5 s)
const TYPING_IDLE_MS = 2500; // stop after this long without a key
const TYPING_SHOWN_MS = 6000; // hide someone's typing if their stop never came

const app = {
  roster: null,
  me: null,
  socket: null,
  rooms: new Map(), // targetId -> room
  current: null,
  presence: new Map(), // userId -> "active" | "away" | "offline"
  typingSentAt: 0,
  typingIdle: null,
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

function nameOf(userId) {
  return app.roster.users.find((u) => u.id === userId)?.name ?? "someone";
}

function notice(text) {
  $("notice").textContent = text;
}

// ---- sign-in -------------------------------------------------------------------------------

async function main() {
  const res = await fetch("/demo/api/workspace");
  if (!res.ok) {
    document.body.textContent = `The demo is not available: ${(await res.json()).error}`;
    return;
  }
  app.roster = await res.json();
  $("workspace").textContent = app.roster.workspace.name;
  $("sign-out").addEventListener("click", signOut);
  const saved = JSON.parse(sessionStorage.getItem(STORAGE) ?? "null");
  if (saved && app.roster.users.some((u) => u.id === saved.userId)) start(saved);
  else showPicker();
}

function showPicker() {
  $("chat").hidden = true;
  $("sign-out").hidden = true;
  $("me").textContent = "";
  $("picker").hidden = false;
  $("users").replaceChildren(
    ...app.roster.users.map((u) =>
      el("li", {}, el("button", { type: "button", onclick: () => signIn(u.id), dataset: { user: u.name } }, u.name)),
    ),
  );
}

async function signIn(userId) {
  const res = await fetch("/demo/api/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  const body = await res.json();
  if (!res.ok) return alert(body.error);
  const session = { userId, token: body.token };
  sessionStorage.setItem(STORAGE, JSON.stringify(session));
  start(session);
}

function signOut() {
  app.socket?.disconnect();
  sessionStorage.removeItem(STORAGE);
  location.reload();
}

// ---- the chat ------------------------------------------------------------------------------

function start({ userId, token }) {
  app.me = app.roster.users.find((u) => u.id === userId);
  $("picker").hidden = true;
  $("chat").hidden = false;
  $("sign-out").hidden = false;
  $("me").textContent = app.me.name;
  buildRooms();
  renderSidebar();
  open([...app.rooms.values()][0]);

  const socket = new Socket(location.origin, { auth: { token, workspaceId: app.roster.workspace.id } });
  app.socket = socket;
  socket.on("state", showState);
  socket.on("connect", onConnect);
  socket.on("connect_error", (message) => {
    notice(`Refused: ${message}`);
    sessionStorage.removeItem(STORAGE);
  });
  socket.on("message:new", (m) => addMessage(m));
  socket.on("message:deleted", onDeleted);
  socket.on("typing:update", onTyping);
  socket.on("presence:update", ({ userId: id, status }) => setPresence(id, status));
  socket.on("error", ({ message }) => notice(message));
  socket.connect();

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send($("input").value);
  });
  $("input").addEventListener("input", typed);
  document.addEventListener("visibilitychange", tellPresence);
}

function buildRooms() {
  const mine = (ids) => ids.includes(app.me.id);
  for (const c of app.roster.channels.filter((c) => mine(c.memberIds))) {
    app.rooms.set(c.id, room(c.id, "channel", `# ${c.name}`));
  }
  for (const d of app.roster.conversations.filter((d) => mine(d.participantIds))) {
    const others = d.participantIds.filter((id) => id !== app.me.id);
    app.rooms.set(d.id, room(d.id, "dm", others.map(nameOf).join(", "), others));
  }
}

function room(targetId, targetType, title, others = []) {
  // messages: sequence -> message; pending: clientMsgId -> {content, error?}
  return { targetId, targetType, title, others, messages: new Map(), pending: new Map(), loaded: false, unread: 0, typing: new Map() };
}

function lastSequence(r) {
  return Math.max(0, ...r.messages.keys());
}

function showState(state) {
  const shown = {
    connecting: "connecting…",
    connected: app.socket.recovered ? "recovered" : "connected",
    reconnecting: `reconnecting (attempt ${app.socket.attempts})…`,
    refused: "refused",
    closed: "not connected",
  }[state];
  $("state").textContent = shown;
  $("state").dataset.state = state === "connected" && app.socket.recovered ? "recovered" : state;
}

async function onConnect({ recovered }) {
  showState("connected");
  notice(recovered ? "Reconnected: the session was recovered and missed messages replayed." : "");
  tellPresence();
  queryPresence();
  // A recovered session got every missed event; a new one asks for what it may have missed.
  if (!recovered) for (const r of app.rooms.values()) if (r.loaded || r === app.current) await catchUp(r);
  for (const r of app.rooms.values()) for (const [clientMsgId, p] of r.pending) if (!p.inFlight) deliver(r, clientMsgId);
}

/** Loads a room's newest page, or everything after the last message held. */
async function catchUp(r) {
  try {
    if (!r.loaded) {
      const page = await app.socket.request("message:history", { targetId: r.targetId, targetType: r.targetType, limit: HISTORY_PAGE });
      if (!page.success) return notice(page.error);
      page.messages.forEach((m) => addMessage(m, { quiet: true }));
      r.loaded = true;
    } else {
      for (;;) {
        const after = lastSequence(r);
        const page = await app.socket.request("message:history", { targetId: r.targetId, targetType: r.targetType, afterSequence: after, limit: HISTORY_PAGE });
        if (!page.success) return notice(page.error);
        page.messages.forEach((m) => addMessage(m));
        if (page.messages.length < HISTORY_PAGE) break;
      }
    }
  } catch (e) {
    // The link dropped meanwhile; the next connect tries again.
  }
  if (r === app.current) renderMessages();
}

function open(r) {
  if (app.current && app.current !== r) stopTyping();
  app.current = r;
  r.unread = 0;
  $("room-title").textContent = r.title;
  $("input").placeholder = `Message ${r.title}`;
  renderSidebar();
  renderMessages();
  renderTyping();
  if (!r.loaded && app.socket?.connected) catchUp(r);
}

function addMessage(m, { quiet = false } = {}) {
  const r = app.rooms.get(m.channelId ?? m.conversationId);
  if (!r) return;
  const known = r.messages.has(m.sequence);
  r.messages.set(m.sequence, m);
  for (const [clientMsgId, p] of r.pending) if (p.messageId === m.id) r.pending.delete(clientMsgId);
  if (r === app.current) renderMessages();
  else if (!known && !quiet && m.authorId !== app.me.id) {
    r.unread++;
    renderSidebar();
  }
}

function onDeleted({ messageId, deletedAt, channelId, conversationId, sequence }) {
  const r = app.rooms.get(channelId ?? conversationId);
  const m = r?.messages.get(sequence);
  if (m && m.id === messageId) {
    Object.assign(m, { content: "", deletedAt });
    if (r === app.current) renderMessages();
  }
}

// ---- sending -------------------------------------------------------------------------------

function send(text) {
  const content = text.trim();
  if (!content || !app.current) return;
  $("input").value = "";
  stopTyping();
  const clientMsgId = crypto.randomUUID();
  app.current.pending.set(clientMsgId, { content });
  renderMessages();
  deliver(app.current, clientMsgId);
}

/** Sends (or re-sends, after a reconnect) one pending message; the same clientMsgId makes
 *  a retry return the original instead of storing it twice. */
async function deliver(r, clientMsgId) {
  const p = r.pending.get(clientMsgId);
  if (!p || !app.socket.connected) return;
  p.inFlight = true;
  try {
    const ack = await app.socket.request("message:send", { targetId: r.targetId, targetType: r.targetType, content: p.content, clientMsgId });
    if (ack.success) {
      p.messageId = ack.messageId;
      // message:new usually came first; if not, it is on its way.
      if (r.messages.get(ack.sequence)?.id === ack.messageId) r.pending.delete(clientMsgId);
    } else {
      p.error = ack.error;
    }
  } catch {
    // Not answered: kept pending, sent again on the next connect.
  }
  p.inFlight = false;
  if (r === app.current) renderMessages();
}

async function remove(m) {
  const ack = await app.socket.request("message:delete", { messageId: m.id }).catch((e) => ({ error: e.message }));
  if (!ack.success) notice(ack.error);
}

// ---- typing and presence --------------------------------------------------------------------

function typed() {
  const r = app.current;
  if (!r || !app.socket.connected) return;
  const now = Date.now();
  if (now - app.typingSentAt > TYPING_REFRESH_MS) {
    app.socket.emit("typing:start", { targetId: r.targetId, targetType: r.targetType });
    app.typingSentAt = now;
  }
  clearTimeout(app.typingIdle);
  app.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(app.typingIdle);
  if (!app.typingSentAt || !app.current) return;
  app.typingSentAt = 0;
  app.socket.emit("typing:stop", { targetId: app.current.targetId, targetType: app.current.targetType });
}

function onTyping({ userId, userName, targetId, isTyping }) {
  const r = app.rooms.get(targetId);
  if (!r) return;
  clearTimeout(r.typing.get(userId)?.timer);
  if (isTyping) {
    const timer = setTimeout(() => onTyping({ userId, targetId, isTyping: false }), TYPING_SHOWN_MS);
    r.typing.set(userId, { name: userName, timer });
  } else {
    r.typing.delete(userId);
  }
  if (r === app.current) renderTyping();
}

function tellPresence() {
  app.socket?.emit(document.hidden ? "presence:setAway" : "presence:setActive");
}

async function queryPresence() {
  const ack = await app.socket
    .request("presence:query", { userIds: app.roster.users.map((u) => u.id) })
    .catch(() => null);
  if (ack?.success) for (const [id, status] of Object.entries(ack.presence)) setPresence(id, status);
}

function setPresence(userId, status) {
  app.presence.set(userId, status);
  renderSidebar();
}

// ---- rendering -----------------------------------------------------------------------------

function dot(userId) {
  const status = app.presence.get(userId) ?? "offline";
  return el("span", { className: `dot ${status}`, title: status });
}

function renderSidebar() {
  const item = (r) => {
    const label = r.targetType === "dm" ? [dot(r.others[0]), r.title] : [r.title];
    const badge = r.unread ? el("span", { className: "unread" }, String(r.unread)) : "";
    return el(
      "li",
      {},
      el("button", { type: "button", className: r === app.current ? "current" : "", onclick: () => open(r), dataset: { room: r.title } }, ...label, badge),
    );
  };
  const rooms = [...app.rooms.values()];
  $("channels").replaceChildren(...rooms.filter((r) => r.targetType === "channel").map(item));
  $("dms").replaceChildren(...rooms.filter((r) => r.targetType === "dm").map(item));
  $("people").replaceChildren(
    ...app.roster.users.map((u) =>
      el(
        "li",
        { dataset: { user: u.name, presence: app.presence.get(u.id) ?? "offline" } },
        dot(u.id),
        u.id === app.me.id ? `${u.name} (you)` : u.name,
      ),
    ),
  );
}

function time(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function renderMessages() {
  const r = app.current;
  const list = $("messages");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 40;
  const items = [...r.messages.values()]
    .sort((a, b) => a.sequence - b.sequence)
    .map((m) => {
      const mine = m.authorId === app.me.id;
      const body = m.deletedAt ? el("em", { className: "deleted" }, "message deleted") : m.content;
      const del = mine && !m.deletedAt ? el("button", { type: "button", className: "delete", title: "Delete", onclick: () => remove(m) }, "×") : "";
      return el(
        "li",
        { className: mine ? "message mine" : "message", dataset: { seq: m.sequence } },
        el("span", { className: "author" }, m.author.name),
        el("time", {}, time(m.createdAt)),
        del,
        el("p", {}, body),
      );
    });
  for (const p of r.pending.values()) {
    items.push(
      el(
        "li",
        { className: "message mine pending" },
        el("span", { className: "author" }, app.me.name),
        el("time", {}, p.error ? "not sent" : "sending…"),
        el("p", {}, p.content),
        p.error ? el("p", { className: "error" }, p.error) : "",
      ),
    );
  }
  list.replaceChildren(...items);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function renderTyping() {
  const names = [...(app.current?.typing.values() ?? [])].map((t) => t.name);
  $("typing").textContent =
    names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
}

main();
