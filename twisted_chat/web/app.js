// groupchat in the browser: one WebSocket to /ws, speaking the JSON rendering of
// docs/PROTOCOL.md.  The server reads what we send exactly as a terminal user's lines,
// so everything here is either a line we type for the user or one we add to keep the
// session alive and the screen up to date (heartbeats, /rooms, /who, restoring after a
// reconnect).  Those added lines are answered in order like any other, which is how we
// tell our own answers from the user's.
//
// Every piece of text from the server reaches the page through textContent or text
// nodes, never through HTML parsing: a message is shown, never interpreted.

const WELCOME_WAIT_MS = 10000; // an open socket that greets nobody is not a chat server
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const ROOMS_MIN_GAP_MS = 10000; // automatic /rooms at most this often
const ROOMS_EVERY_MS = 15000; // while the list of rooms is on screen
const LOG_MAX = 2000; // entries kept per view
const OUTBOX_MAX = 200; // lines typed while offline, kept until the connection is back
const HISTORY_MAX = 100;
const MEMBERS_SHOWN = 500;
const HEARTBEAT_TOKEN = "gc-hb-";
const RESTORE_TOKEN = "gc-restore-";
const OLDER_TOKEN = "gc-older-"; // the /ping after a "Show older messages" /history
const OLDER_PAGE = 50; // lines asked for by "Show older messages"
// A page of older lines all shown already (after a reconnect the server starts paging
// from its replay again): the next is asked for at once, up to this many in a row.
const OLDER_SKIPS = LOG_MAX / OLDER_PAGE;
const STORAGE_KEY = "groupchat.session";

const $ = (id) => document.getElementById(id);

// -- small helpers --------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// Defence in depth: the server strips control, bidi and invisible characters already.
const UNSAFE_CHARS =
  /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

function str(value) {
  if (value === undefined || value === null) return "";
  return String(value).replace(UNSAFE_CHARS, "");
}

// Names match ignoring case on the server (look-alikes too, which only it can judge);
// the names it sends are canonical, so case-folding is enough to match them here.
function keyOf(name) {
  return str(name).normalize("NFKC").toLowerCase();
}

function same(a, b) {
  return a !== null && a !== undefined && b !== null && b !== undefined && keyOf(a) === keyOf(b);
}

const encoder = new TextEncoder();
const byteLength = (text) => encoder.encode(text).length;

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function timeElement(ts) {
  const ms = Number(ts) * 1000;
  const date = new Date(Number.isFinite(ms) && ms > 0 ? ms : Date.now());
  const node = el("time", "time", timeFormat.format(date));
  node.dateTime = date.toISOString();
  node.title = fullFormat.format(date);
  return node;
}

const now = () => Date.now();
const nowTs = () => Date.now() / 1000;

// A stable colour per nickname, so a speaker is recognisable at a glance: one of
// NICK_COLOURS hues (style.css, .c0 to .c15), from FNV-1a mixed by MurmurHash3's
// finaliser, so names differing in one letter land far apart.  The starting value is
// FNV's offset basis moved so that the names people try first (alice, bob, carol,
// dave, eve, tom: no two of them on neighbouring hues; mallory, frank, grace, kay and
// rita too) all get colours of their own.
const NICK_COLOURS = 16;
const NICK_SEED = 2166138119;

function colourClass(nick) {
  let hash = NICK_SEED;
  for (const ch of keyOf(nick)) {
    hash = Math.imul(hash ^ ch.codePointAt(0), 16777619) >>> 0;
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return `c${(hash >>> 0) % NICK_COLOURS}`;
}

const URL_PATTERN = /\bhttps?:\/\/[^\s<>"'`]+/gi;

// Text with its web addresses as links; only http(s) addresses become links.
function appendText(parent, text) {
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    const url = match[0].replace(/[.,;:!?)\]}'"]+$/, "");
    parent.append(text.slice(last, match.index));
    let href = null;
    try {
      const parsed = new URL(url);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
    } catch {
      href = null;
    }
    if (href) {
      const link = el("a", null, url);
      link.href = href;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      parent.append(link);
    } else {
      parent.append(url);
    }
    last = match.index + url.length;
  }
  parent.append(text.slice(last));
}

function roomName(text) {
  const name = str(text).trim();
  return name.startsWith("#") ? name : `#${name}`;
}

// -- state ------------------------------------------------------------------------------

const state = {
  nick: null, // as the server last confirmed it
  wantedNick: null, // what we ask for again after a reconnect
  loggedIn: false, // the nickname is the login name and cannot change
  rooms: new Map(), // key -> {name, count, members: string[]|null, membersAt}
  pms: new Map(), // key -> {nick}
  directory: { rooms: [], total: 0, known: false },
  serverCurrent: null, // the current room the server last told us of
  active: "server", // the id of the view on screen
  everConnected: false,
  heartbeat: { interval: 10, timeout: 30 },
  maxLine: 2048,
  limits: null,
  creds: null, // {name, password}: kept in memory only, to log in again after a reconnect
  outbox: [], // the user's lines not sent yet: {line, room, echo}
  history: [],
  historyAt: -1,
  historyDraft: "",
};

// One log per room, per private conversation, and one for the server; by id.  A view
// is ``pinned`` while its reader is at its newest line: it then stays there whatever
// changes (new lines, a resized window, a phone turned, a drawer, the keyboard or the
// nickname form taking room), until the reader scrolls up.
const views = new Map(); // id -> {id, kind, key, list, unread, scrollTop, pinned}
const logBox = $("log");
let lastScrollTop = 0; // where the log was at its last scroll event: which way it moved

// One WebSocket's life; a new one is made for each connection attempt.
let conn = null;
const reconnect = { attempt: 0, timer: null, tick: null, due: 0, reason: "" };
let wantConnected = true; // false after /quit, or once reconnecting cannot help
let holdForLogin = false; // the server hung up on an unfinished login: wait for the form
let roomsTimer = null;
let lastRoomsAt = -Infinity;

function isMe(nick) {
  return same(nick, state.nick);
}

function activeRoom() {
  const view = views.get(state.active);
  if (!view || view.kind !== "room") return null;
  const room = state.rooms.get(view.key);
  return room ? room.name : null;
}

function saveState() {
  try {
    sessionStorage.setItem(
      STORAGE_KEY,
      JSON.stringify({
        nick: state.loggedIn ? null : state.wantedNick,
        rooms: [...state.rooms.values()].map((room) => room.name),
        current: activeRoom() || state.serverCurrent,
        pms: [...state.pms.values()].map((pm) => pm.nick),
        active: state.active,
      }),
    );
  } catch {
    // Storage may be off (private mode, quota): a reload then starts afresh, that is all.
  }
}

function loadState() {
  let saved;
  try {
    saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
  } catch {
    return; // unreadable: start afresh
  }
  if (!saved || typeof saved !== "object") return;
  if (typeof saved.nick === "string" && saved.nick) state.wantedNick = saved.nick;
  if (Array.isArray(saved.rooms)) {
    for (const name of saved.rooms) if (typeof name === "string" && name) ensureRoom(name);
  }
  if (Array.isArray(saved.pms)) {
    for (const nick of saved.pms) if (typeof nick === "string" && nick) ensurePm(nick);
  }
  if (typeof saved.current === "string") state.serverCurrent = saved.current;
  // A reload restores like a reconnect: same name, same rooms.
  state.everConnected = state.rooms.size > 0 || Boolean(state.wantedNick);
  if (typeof saved.active === "string" && views.has(saved.active)) state.active = saved.active;
  else if (saved.current && state.rooms.has(keyOf(saved.current))) {
    state.active = `room:${keyOf(saved.current)}`;
  }
}

// -- views ------------------------------------------------------------------------------

function makeView(id, kind, key) {
  let view = views.get(id);
  if (view) return view;
  const list = el("ol", "entries");
  list.hidden = id !== state.active;
  logBox.append(list);
  logResized.observe(list); // its lines rewrap when the log's width changes
  view = {
    id,
    kind,
    key,
    list,
    unread: 0,
    scrollTop: 0,
    pinned: true,
    seen: new Map(), // what its chat lines are known by (see lineKeys) -> the entry
    older: null, // the entry at its top: "Show older messages", or why there are none
    olderToken: null, // the /ping after our /history, while its answer is awaited
    olderSkips: 0,
  };
  views.set(id, view);
  return view;
}

function ensureRoom(name) {
  const key = keyOf(name);
  let room = state.rooms.get(key);
  if (!room) {
    room = { name: str(name), count: null, members: null, membersAt: 0 };
    state.rooms.set(key, room);
  }
  makeView(`room:${key}`, "room", key);
  return room;
}

function dropRoom(name) {
  const key = keyOf(name);
  state.rooms.delete(key);
  dropView(`room:${key}`);
}

function ensurePm(nick) {
  const key = keyOf(nick);
  let pm = state.pms.get(key);
  if (!pm) {
    pm = { nick: str(nick) };
    state.pms.set(key, pm);
  }
  makeView(`pm:${key}`, "pm", key);
  return pm;
}

function dropView(id) {
  const view = views.get(id);
  if (!view || id === "server") return;
  view.list.remove();
  views.delete(id);
  if (state.active === id) {
    // What the server does when the current room goes: the room joined last.
    const rooms = [...state.rooms.keys()];
    const fallback = rooms.length ? `room:${rooms[rooms.length - 1]}` : "server";
    activate(fallback, { follow: false }); // its own current event says where we are
  }
}

function roomView(name) {
  return views.get(`room:${keyOf(name)}`) || null;
}

// Where a line about nothing in particular goes: the view the user is looking at.
function hereView() {
  return views.get(state.active) || views.get("server");
}

function nearBottom() {
  return logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 48;
}

function toBottom() {
  logBox.scrollTop = logBox.scrollHeight;
  lastScrollTop = logBox.scrollTop;
  $("jump-latest").hidden = true;
}

// Brings the view on screen's ``pinned`` up to date with where its log is.  Only the
// reader unpins a view, by scrolling up; a layout change that leaves a pinned view
// short of its end (a narrower log, so longer lines) is not the reader's doing, and
// goes back to the end.  Called on scroll events, and before acting on ``pinned``, as
// a scroll's event comes a frame later.
function notePosition() {
  const view = views.get(state.active);
  const top = logBox.scrollTop;
  if (nearBottom()) {
    view.pinned = true;
    $("jump-latest").hidden = true;
  } else if (top < lastScrollTop - 1) {
    view.pinned = false;
  }
  lastScrollTop = top;
}

// The log or what it holds changed size: a pinned view goes back to its newest line.
// (Observers run after layout and before paint, so the jump is never seen.)
const logResized = new ResizeObserver(() => {
  const view = views.get(state.active);
  if (!view) return;
  notePosition();
  if (view.pinned && logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight >= 1)
    toBottom();
});
logResized.observe(logBox);

// ``own``: the user's own line, always brought into view.
function addEntry(view, entry, { unread = false, own = false } = {}) {
  if (!view) return;
  const visible = view.id === state.active;
  if (visible) notePosition();
  if (own) view.pinned = true;
  const stick = visible && view.pinned;
  view.list.append(entry);
  while (view.list.childElementCount > LOG_MAX) dropEntry(view, view.list.firstElementChild);
  if (visible) {
    if (stick) {
      view.pinned = true;
      toBottom();
    } else {
      $("jump-latest").hidden = false;
    }
  }
  if (unread && (!visible || document.hidden)) {
    view.unread += 1;
    renderLists();
    updateTitle();
  }
}

function entryShell(kind, ts) {
  const li = el("li", `entry ${kind}`);
  li.append(timeElement(ts), " ");
  return li;
}

function chatEntry(ts, nick, text, { action = false, own = false } = {}) {
  const li = entryShell(action ? "action" : "message", ts);
  if (own) li.classList.add("own");
  if (!own && state.nick && mentions(text, state.nick)) li.classList.add("mention");
  if (action) li.append(el("span", "star", "*"), " ");
  li.append(el("bdi", `nick ${colourClass(nick)}`, nick), " ");
  const body = el("span", "text");
  body.dir = "auto";
  appendText(body, text);
  li.append(body);
  return li;
}

// Our nickname as a word of its own (not inside another word) in someone's text.
function mentions(text, nick) {
  const lower = text.toLowerCase();
  const wanted = nick.toLowerCase();
  const word = /[\p{L}\p{N}_-]/u;
  for (let at = lower.indexOf(wanted); at >= 0; at = lower.indexOf(wanted, at + 1)) {
    const before = lower[at - 1];
    const after = lower[at + wanted.length];
    if (!(before && word.test(before)) && !(after && word.test(after))) return true;
  }
  return false;
}

function noticeEntry(ts, text, kind = "notice") {
  const li = entryShell(kind, ts);
  const body = el("span", "text");
  body.dir = "auto";
  appendText(body, text);
  li.append(body);
  return li;
}

// -- earlier lines (history) -----------------------------------------------------------
//
// A room's history comes on joining it (``page`` false) and as the answer to /history
// (``page`` true, older lines).  Its lines are set apart (class ``history``, dated) and
// told once per view: each chat line on screen is known by its history id, by what
// the server recorded (time, sender, text: a live line carries the same), and our own
// lines, shown with our clock's time as they were sent, by sender and text.  So the
// replay after a reconnect adds only what was missed.

const entryKeys = new WeakMap(); // entry -> the keys it holds in its view's ``seen``

function lineKeys(ts, nick, text, id) {
  const keys = [`line ${Number(ts).toFixed(3)} ${keyOf(nick)} ${text}`];
  if (id !== undefined && id !== null) keys.push(`id ${str(id)}`);
  if (isMe(nick)) keys.push(`own ${keyOf(nick)} ${text}`);
  return keys;
}

function markSeen(view, entry, keys) {
  if (!view) return;
  for (const key of keys) view.seen.set(key, entry);
  entryKeys.set(entry, keys);
}

function dropEntry(view, entry) {
  for (const key of entryKeys.get(entry) || []) {
    if (view.seen.get(key) === entry) view.seen.delete(key);
  }
  if (entry === view.older) view.older = null;
  entry.remove();
}

const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const yearFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

// A history line's time, with its date: it may be days old.
function datedTime(ts) {
  const node = timeElement(ts);
  const date = new Date(node.dateTime);
  const day = date.getFullYear() === new Date().getFullYear() ? dayFormat : yearFormat;
  node.textContent = `${day.format(date)} ${timeFormat.format(date)}`;
  return node;
}

function historyEntry(item) {
  const nick = str(item.nick);
  const action = item.kind === "action";
  const li = chatEntry(item.ts, nick, str(item.text), { action, own: isMe(nick) });
  li.classList.add("history");
  li.replaceChild(datedTime(item.ts), li.firstChild);
  return li;
}

function divider(text, className) {
  const li = el("li", `history-divider ${className}`);
  li.setAttribute("role", "separator");
  li.append(el("span", null, text));
  return li;
}

// The top of a view: a button for older lines (``more``), or why there are none.
function setOlder(view, what) {
  let li = view.older;
  if (!li) {
    li = el("li", "history-older");
    view.older = li;
  }
  if (view.list.firstElementChild !== li) view.list.prepend(li);
  if (what === "more") {
    const button = el("button", "history-more", "Show older messages");
    button.type = "button";
    button.dataset.view = view.id;
    li.replaceChildren(button);
  } else if (what === "start") {
    li.replaceChildren(el("span", "history-note", "Beginning of kept history"));
  } else {
    li.replaceChildren(
      el("span", "history-note", `This page keeps the last ${LOG_MAX} lines of a conversation.`),
    );
  }
}

function viewTarget(view) {
  if (view.kind === "room") return state.rooms.get(view.key)?.name ?? null;
  if (view.kind === "pm") return state.pms.get(view.key)?.nick ?? null;
  return null;
}

// "Show older messages": /history for the view, then a ping; the ping's pong, come
// before any history, means the answer was an error (shown as such): the button is
// offered again.
function askOlder(view) {
  const c = conn;
  const target = viewTarget(view);
  if (!target || view.olderToken) return;
  if (!c || !c.restored) {
    problem("Not connected: older messages can be loaded once the connection is back.");
    return;
  }
  view.olderToken = `${OLDER_TOKEN}${now()}`;
  const button = view.older?.querySelector("button");
  if (button) {
    button.disabled = true;
    button.textContent = "Loading older messages…";
  }
  if (view.id === state.active) notePosition();
  view.pinned = false; // reading upwards: what comes goes above, the screen stays put
  control(`/history ${target} ${OLDER_PAGE}`);
  control(`/ping ${view.olderToken}`);
}

function olderAnswered(view) {
  view.olderToken = null;
  const button = view.older?.querySelector("button");
  if (button) {
    button.disabled = false;
    button.textContent = "Show older messages";
  }
}

// Puts entries in ``view`` before ``anchor`` (null: at the end), keeping what is on
// screen where it is when the view is not at its newest line.
function insertEntries(view, entries, anchor) {
  const visible = view.id === state.active;
  if (visible) notePosition();
  const height = logBox.scrollHeight;
  const top = logBox.scrollTop;
  for (const entry of entries) view.list.insertBefore(entry, anchor);
  if (!visible) return;
  if (view.pinned) {
    toBottom();
  } else {
    logBox.scrollTop = top + (logBox.scrollHeight - height);
    lastScrollTop = logBox.scrollTop;
  }
}

function historyView(event) {
  if (event.room) return roomView(str(event.room));
  if (!event.with) return null;
  const peer = str(event.with);
  const known = state.pms.has(keyOf(peer));
  ensurePm(peer);
  if (!known) {
    renderLists();
    saveState();
  }
  return views.get(`pm:${keyOf(peer)}`);
}

function historyShown(event) {
  const items = Array.isArray(event.items)
    ? event.items.filter((item) => item && typeof item === "object")
    : [];
  const page = event.page === true;
  const more = typeof event.more === "boolean" ? event.more : null;
  const view = historyView(event);
  if (!view) {
    // Not a conversation on screen (a room we are not in): shown where the user is.
    const where = str(event.room || event.with);
    const entries = items.map(historyEntry);
    if (!entries.length) entries.push(noticeEntry(event.ts, `Nothing older is kept in ${where}.`));
    else entries.unshift(divider(`Earlier messages in ${where}`, "start"));
    for (const entry of entries) addEntry(hereView(), entry);
    return;
  }
  const asked = Boolean(view.olderToken) && page;
  if (asked) olderAnswered(view);
  const fresh = []; // [entry, keys] of the lines this view does not show yet
  for (const item of items) {
    const keys = lineKeys(item.ts, str(item.nick), str(item.text), item.id);
    if (!keys.some((key) => view.seen.has(key))) fresh.push([historyEntry(item), keys]);
  }
  const start = view.list.querySelector(":scope > .history-divider.start");
  const hasLines = view.list.querySelector(":scope > .entry.message, :scope > .entry.action");
  if (!page && hasLines) {
    // A rejoin (after a reconnect): what was said meanwhile, after what is shown.
    if (fresh.length) {
      addEntry(view, divider("Earlier messages", "start"));
      for (const [entry, keys] of fresh) {
        markSeen(view, entry, keys);
        addEntry(view, entry);
      }
      addEntry(view, divider("New messages below", "end"));
    }
    if (!view.older && more !== null) setOlder(view, more ? "more" : "start");
    return;
  }
  // Above everything shown: the first lines of a view, or older ones; within the
  // view's bound (what does not fit is left out, and its top says so).
  const free = LOG_MAX - view.list.childElementCount - (start ? 1 : 3);
  const shown = free > 0 ? fresh.slice(Math.max(0, fresh.length - free)) : [];
  if (shown.length) {
    let anchor = view.list.firstElementChild;
    if (start) anchor = start.nextSibling;
    else if (view.older) anchor = view.older.nextSibling;
    const entries = shown.map(([entry, keys]) => {
      markSeen(view, entry, keys);
      return entry;
    });
    if (!start) {
      entries.unshift(divider("Earlier messages", "start"));
      entries.push(divider("New messages below", "end"));
    }
    insertEntries(view, entries, anchor);
  }
  if (shown.length < fresh.length) setOlder(view, "full");
  else if (more !== null) setOlder(view, more ? "more" : "start");
  if (page && !fresh.length && items.length) {
    if (asked && more && view.olderSkips < OLDER_SKIPS) {
      view.olderSkips += 1;
      askOlder(view); // all shown already: on to the page before
      return;
    }
    if (!asked) notice(hereView(), "Those messages are shown already.", event.ts);
  }
  view.olderSkips = 0;
}

function notice(view, text, ts = nowTs()) {
  addEntry(view, noticeEntry(ts, text));
}

function problem(text, ts = nowTs()) {
  addEntry(hereView(), noticeEntry(ts, text, "error"));
}

// -- the screen around the log ----------------------------------------------------------

function viewLabel(view) {
  if (view.kind === "room") return state.rooms.get(view.key)?.name ?? view.key;
  if (view.kind === "pm") return state.pms.get(view.key)?.nick ?? view.key;
  return "Server notices";
}

function roomCount(room) {
  if (Array.isArray(room.members)) return room.members.length;
  return room.count;
}

// ``follow``: make the room the server's current one (not when the server moved us).
function activate(id, { focus = false, follow = true } = {}) {
  if (!views.has(id)) id = "server";
  const old = views.get(state.active);
  if (old && old.id !== id) {
    notePosition();
    old.scrollTop = logBox.scrollTop;
    old.list.hidden = true;
  }
  const view = views.get(id);
  state.active = id;
  view.list.hidden = false;
  view.unread = 0;
  if (view.pinned) {
    toBottom();
  } else {
    logBox.scrollTop = view.scrollTop;
    lastScrollTop = logBox.scrollTop;
    $("jump-latest").hidden = true;
  }
  renderHeader();
  renderLists();
  renderMembers();
  updateTitle();
  saveState();
  if (view.kind === "room") {
    const room = state.rooms.get(view.key);
    // Fresh members on every visit: joins and leaves were tracked, but a crowded room
    // only sends summaries, and a quiet /who costs one line.
    if (room && now() - room.membersAt > 2000) queueWho(room.name);
    if (follow && room && conn) {
      conn.follow = room.name;
      pump();
    }
  }
  if (openDrawer()) {
    // Done with the drawer; the focus must not stay behind in it, out of sight.
    const inDrawer = document.activeElement?.closest("#sidebar, #members");
    closeDrawers();
    if (inDrawer) focus = true;
  }
  if (focus) $("composer-input").focus();
}

function renderHeader() {
  const view = views.get(state.active);
  const name = viewLabel(view);
  $("view-name").textContent = name;
  const detail = $("view-detail");
  const leave = $("leave-button");
  const input = $("composer-input");
  const label = $("composer-label");
  const toggleMembers = $("toggle-members");
  document.body.classList.toggle("no-members", view.kind !== "room");
  toggleMembers.hidden = view.kind !== "room";
  if (view.kind === "room") {
    const room = state.rooms.get(view.key);
    const count = room ? roomCount(room) : null;
    detail.textContent = count === null ? "" : `${count} here`;
    leave.hidden = false;
    leave.textContent = "Leave";
    leave.title = `Leave ${name}`;
    label.textContent = `Message ${name}`;
    input.placeholder = narrow() ? `Message ${name}` : `Message ${name}, or /help for commands`;
    toggleMembers.textContent = count === null ? "Members" : `Members (${count})`;
  } else if (view.kind === "pm") {
    detail.textContent = "private";
    leave.hidden = false;
    leave.textContent = "Close";
    leave.title = `Close the conversation with ${name}`;
    label.textContent = `Private message to ${name}`;
    input.placeholder = `Private message to ${name}`;
  } else {
    detail.textContent = "";
    leave.hidden = true;
    label.textContent = "Command or message";
    input.placeholder = narrow()
      ? "/join #room, /help, or a message"
      : "/join #room, /help, or a message to your current room";
  }
}

// A sidebar item's contents: name, member count, unread badge.
function fillItem(button, label, { count = null, unread = 0 } = {}) {
  const parts = [el("bdi", "item-name", label)];
  if (count !== null && count !== undefined) {
    const n = el("span", "count", String(count));
    n.title = `${count} here`;
    n.setAttribute("aria-label", `${count} here`);
    parts.push(n);
  }
  if (unread > 0) {
    const badge = el("span", "badge", String(unread));
    badge.setAttribute("aria-label", `${unread} unread`);
    parts.push(badge);
  }
  button.replaceChildren(...parts);
}

// Brings a list to ``items`` ({key, sig, fill(li)}) keeping the elements of the items it
// already shows: a list redrawn whole under the pointer (a busy room updates it often)
// would lose a click, and the keyboard focus with it. ``fill`` runs when ``sig`` changed
// and must keep the item's button, changing only what is inside it.
function syncList(list, items) {
  const old = new Map();
  for (const li of list.children) old.set(li.dataset.key, li);
  let at = list.firstElementChild;
  for (const item of items) {
    let li = old.get(item.key);
    if (li) {
      old.delete(item.key);
    } else {
      li = el("li");
      li.dataset.key = item.key;
    }
    if (li.dataset.sig !== item.sig) {
      item.fill(li);
      li.dataset.sig = item.sig;
    }
    if (li === at) at = at.nextElementSibling;
    else list.insertBefore(li, at);
  }
  for (const li of old.values()) li.remove();
}

function ownButton(li, className, text) {
  let node = li.querySelector(`:scope > button.${className.split(" ")[0]}`);
  if (!node) {
    node = el("button", className, text);
    node.type = "button";
    li.append(node);
  }
  return node;
}

function viewItem(view, label, options = {}) {
  const onScreen = view.id === state.active;
  return {
    key: view.id,
    sig: JSON.stringify([label, options.count ?? null, options.unread ?? 0, onScreen]),
    fill(li) {
      const item = ownButton(li, "view-item");
      item.dataset.view = view.id;
      if (onScreen) item.setAttribute("aria-current", "true");
      else item.removeAttribute("aria-current");
      fillItem(item, label, options);
    },
  };
}

function renderLists() {
  const rooms = [...state.rooms.entries()].sort((a, b) => a[1].name.localeCompare(b[1].name));
  syncList(
    $("room-list"),
    rooms.map(([key, room]) => {
      const view = views.get(`room:${key}`);
      return viewItem(view, room.name, { count: roomCount(room), unread: view.unread });
    }),
  );
  $("no-rooms").hidden = state.rooms.size > 0;

  const pms = [...state.pms.entries()].sort((a, b) => a[1].nick.localeCompare(b[1].nick));
  syncList(
    $("pm-list"),
    pms.map(([key, pm]) => {
      const item = viewItem(views.get(`pm:${key}`), pm.nick, {
        unread: views.get(`pm:${key}`).unread,
      });
      const fill = item.fill;
      item.fill = (li) => {
        li.className = "pm-item";
        fill(li);
        const close = ownButton(li, "close-pm", "×");
        close.dataset.key = key;
        close.title = `Close the conversation with ${pm.nick}`;
        close.setAttribute("aria-label", close.title);
      };
      return item;
    }),
  );
  $("pm-section").hidden = state.pms.size === 0;

  const others = state.directory.rooms.filter((r) => !state.rooms.has(keyOf(r.room)));
  syncList(
    $("directory-list"),
    others.map((r) => ({
      key: keyOf(r.room),
      sig: JSON.stringify([r.room, r.count]),
      fill(li) {
        const join = ownButton(li, "view-item join-item");
        join.dataset.room = r.room;
        join.title = `Join ${r.room}`;
        fillItem(join, r.room, { count: r.count });
      },
    })),
  );
  const more = $("directory-more");
  const hidden = state.directory.total - state.directory.rooms.length;
  if (!state.directory.known) {
    more.hidden = false;
    more.textContent = "Not loaded yet.";
  } else if (hidden > 0) {
    more.hidden = false;
    more.textContent = `and ${hidden} more: type /rooms TEXT to search`;
  } else if (others.length === 0) {
    more.hidden = false;
    more.textContent = "None: you are in every room.";
  } else {
    more.hidden = true;
  }

  const server = views.get("server");
  syncList($("server-list"), [viewItem(server, "Server notices", { unread: server.unread })]);

  const total = totalUnread();
  const badge = $("sidebar-unread");
  badge.hidden = total === 0;
  badge.textContent = String(total);
  badge.setAttribute("aria-label", `${total} unread`);
  renderHeader();
}

function renderMembers() {
  const view = views.get(state.active);
  const list = $("member-list");
  const more = $("members-more");
  const heading = $("members-heading");
  const room = view && view.kind === "room" ? state.rooms.get(view.key) : null;
  const nicks = room && Array.isArray(room.members) ? [...room.members] : null;
  if (!nicks) {
    syncList(list, []);
    more.hidden = !room;
    more.textContent = "Loading…";
    heading.textContent = "Members";
    return;
  }
  nicks.sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
  heading.textContent = `Members (${nicks.length})`;
  syncList(
    list,
    nicks.slice(0, MEMBERS_SHOWN).map((nick) => ({
      key: `${keyOf(nick)}${isMe(nick) ? " me" : ""}`,
      sig: nick,
      fill(li) {
        const name = el("bdi", `nick ${colourClass(nick)}`, nick);
        if (isMe(nick)) {
          const me = el("span", "member me-member");
          me.append(name, " ", el("span", "hint", "(you)"));
          li.replaceChildren(me);
          return;
        }
        const member = ownButton(li, "member");
        member.dataset.nick = nick;
        member.title = `Private conversation with ${nick}`;
        member.replaceChildren(name);
      },
    })),
  );
  more.hidden = nicks.length <= MEMBERS_SHOWN;
  more.textContent = `and ${nicks.length - MEMBERS_SHOWN} more`;
}

function totalUnread() {
  let total = 0;
  for (const view of views.values()) total += view.unread;
  return total;
}

function updateTitle() {
  const view = views.get(state.active);
  const total = totalUnread();
  const where = view && view.kind !== "server" ? `${viewLabel(view)} — ` : "";
  document.title = `${total ? `(${total}) ` : ""}${where}groupchat`;
}

function renderMe() {
  $("my-nick").textContent = state.nick || state.wantedNick || "…";
  const button = $("nick-button");
  button.disabled = state.loggedIn;
  button.title = state.loggedIn ? "Your nickname is your login name" : "Change your nickname";
}

function setStatus(kind, text) {
  const status = $("status");
  status.dataset.state = kind;
  $("status-text").textContent = text;
  const button = $("reconnect-now");
  const offer = kind === "reconnecting" || kind === "offline";
  button.hidden = !offer || holdForLogin;
  button.textContent = wantConnected ? "Reconnect now" : "Connect again";
}

// -- the connection ---------------------------------------------------------------------

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function connect() {
  clearTimeout(reconnect.timer);
  clearInterval(reconnect.tick);
  reconnect.timer = reconnect.tick = null;
  if (conn) return;
  holdForLogin = false;
  wantConnected = true;
  let ws;
  try {
    ws = new WebSocket(socketUrl());
  } catch (error) {
    scheduleReconnect(`cannot open a WebSocket (${str(error.message)})`);
    return;
  }
  const c = {
    ws,
    lastHeard: now(),
    lastPing: now(),
    heard: false,
    welcomed: false,
    restored: false,
    reconnected: state.everConnected,
    barrier: null,
    restoreErrors: [],
    restoreJoins: new Map(), // room key -> its "You joined" line, said once restored
    restoringNick: null,
    nickRetry: null,
    nickAttempts: 0,
    setupNick: null,
    setupRoom: null,
    loginRequired: false,
    loginSent: false,
    loginRetries: 0,
    autoLogin: false,
    control: [], // our own lines: restoring, /who, /rooms; they go before the user's
    askedCurrent: null, // the current room once the server has read all we sent
    follow: null, // a room the user put on screen, to become the server's current one
    autoJoins: [], // rooms our view-following /join lines asked for, oldest first
    whoAsked: [], // rooms a user-typed /who asked for (null: the current one)
    roomsAsked: [], // for each plain /rooms in flight: true when the user typed it
    bucket: null,
    pumpTimer: null,
    pingTimer: null,
    silenceTimer: null,
    welcomeTimer: null,
    beats: 0,
    quitting: false,
    fatal: null,
    bye: null,
    shutdown: null,
    refusal: null,
    closed: false,
  };
  conn = c;
  setStatus(
    "connecting",
    navigator.onLine === false ? "Connecting… (the browser says it is offline)" : "Connecting…",
  );
  ws.onopen = () => opened(c);
  ws.onmessage = (event) => received(c, event.data);
  ws.onclose = (event) => closed(c, event);
  ws.onerror = () => {}; // always followed by close, which says what it can
  c.welcomeTimer = setTimeout(() => {
    if (!c.heard) abort(c, "the server did not greet us");
  }, WELCOME_WAIT_MS);
}

function opened(c) {
  if (c !== conn) return;
  c.lastHeard = now();
  armHeartbeat(c);
  // Sent before the greeting, these seat us under our name in our room at once: nobody
  // sees a guest arrive in #lobby and rename itself (PROTOCOL.md, "Arriving").
  const setup = [];
  if (state.wantedNick && !state.creds) {
    c.setupNick = state.wantedNick;
    setup.push(`/nick ${state.wantedNick}`);
  }
  const room = activeRoom() || state.serverCurrent;
  if (room && state.everConnected) {
    c.setupRoom = room;
    setup.push(`/join ${room}`);
  }
  // In one message, first thing: lines of one message are one read for the server, so
  // it takes all of them as the connection's setup (a message holding line breaks is
  // several lines, in order).
  if (setup.length) c.ws.send(setup.join("\n"));
  setStatus("connecting", "Connected, waiting for the server's greeting…");
}

function received(c, data) {
  if (c !== conn || typeof data !== "string") return;
  c.lastHeard = now();
  c.heard = true;
  armHeartbeat(c);
  for (const raw of data.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    if (!line.startsWith("{")) {
      if (line.startsWith("!!! refused:"))
        c.refusal = `refused by the server: ${str(line.slice(12)).trim()}`;
      continue; // a text line: not meant for us
    }
    let event;
    try {
      event = JSON.parse(line);
    } catch {
      continue;
    }
    if (!event || typeof event !== "object" || typeof event.type !== "string") continue;
    try {
      handle(c, event);
    } catch (error) {
      // One odd event must not stop the page; say so where a developer looks.
      console.error("groupchat: could not handle", event, error);
    }
  }
}

function closed(c, event) {
  if (c.closed) return;
  c.closed = true;
  clearTimeout(c.pingTimer);
  clearTimeout(c.silenceTimer);
  clearTimeout(c.welcomeTimer);
  clearTimeout(c.pumpTimer);
  clearTimeout(c.nickRetry);
  c.ws.onopen = c.ws.onmessage = c.ws.onclose = c.ws.onerror = null;
  if (conn !== c) return;
  conn = null;
  for (const view of views.values()) if (view.olderToken) olderAnswered(view);
  const why =
    c.abortReason ||
    c.bye ||
    (c.shutdown ? `the server is shutting down (${c.shutdown})` : null) ||
    c.refusal ||
    closeReason(event, c);
  // A bye or shutdown was shown as it came: the close that follows it says no more.
  if (c.welcomed && !c.quitting && !c.bye && !c.shutdown) {
    notice(hereView(), `Disconnected: ${why}`);
  }
  if (c.quitting) {
    wantConnected = false;
    setStatus("offline", "Offline: you left the chat");
    return;
  }
  if (c.fatal) {
    wantConnected = false;
    setStatus("offline", `Offline: ${c.fatal}`);
    return;
  }
  if (holdForLogin) {
    setStatus("login", "Offline: log in to connect again");
    return;
  }
  scheduleReconnect(why);
}

function closeReason(event, c) {
  const reason = event && event.reason ? str(event.reason) : "";
  if (reason) return reason;
  if (!c.heard)
    return navigator.onLine === false
      ? "the browser is offline"
      : "the server could not be reached";
  return "the connection was lost";
}

// Give up on this socket now: a dead link may take minutes to report its own close.
function abort(c, reason) {
  if (c.closed) return;
  c.abortReason = reason;
  try {
    c.ws.close(4000, "no answer");
  } catch {
    // already closing
  }
  closed(c, null);
}

function scheduleReconnect(why) {
  if (!wantConnected) return;
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** reconnect.attempt);
  // Jitter, so a restarted server is not met by every page in the same second.
  const delay = Math.min(BACKOFF_MAX_MS, Math.round(base * (0.75 + Math.random() * 0.5)));
  reconnect.attempt += 1;
  reconnect.due = now() + delay;
  reconnect.reason = why;
  clearTimeout(reconnect.timer);
  clearInterval(reconnect.tick);
  reconnect.timer = setTimeout(connect, delay);
  const show = () => {
    const left = Math.max(1, Math.ceil((reconnect.due - now()) / 1000));
    const offline = navigator.onLine === false ? " (the browser is offline)" : "";
    setStatus("reconnecting", `Reconnecting in ${left} s${offline}: ${reconnect.reason}`);
  };
  show();
  reconnect.tick = setInterval(show, 1000);
}

function reconnectNow() {
  if (conn) return;
  reconnect.attempt = 0;
  connect();
}

function send(c, line) {
  if (c.closed || c.ws.readyState !== WebSocket.OPEN) return false;
  c.ws.send(line);
  return true;
}

// The heartbeat's timers are set again each time the server is heard from, rather than
// each setting the next: browsers hold a hidden tab's long chains of timers to one
// wake-up a minute, which would starve a 10 s heartbeat, but not timers set from a
// network event.
function armHeartbeat(c) {
  clearTimeout(c.pingTimer);
  clearTimeout(c.silenceTimer);
  const interval = state.heartbeat.interval * 1000;
  c.pingTimer = setTimeout(() => beat(c), Math.max(0, c.lastPing + interval - now()));
  c.silenceTimer = setTimeout(() => silence(c), state.heartbeat.timeout * 1000 + 50);
}

function beat(c) {
  if (c !== conn || c.closed) return;
  ping(c);
  c.pingTimer = setTimeout(() => beat(c), state.heartbeat.interval * 1000);
}

// Nothing heard for the announced timeout: the server (or the way to it) is gone.
function silence(c) {
  if (c !== conn || c.closed) return;
  const t = now();
  const silent = t - c.lastHeard;
  const timeout = state.heartbeat.timeout * 1000;
  if (silent < timeout) {
    c.silenceTimer = setTimeout(() => silence(c), timeout - silent + 50);
    return;
  }
  if (t - c.lastPing > state.heartbeat.interval * 1000 + 2000) {
    // Our own pings were late: the page was frozen (a hidden tab, a sleeping laptop),
    // so the silence proves nothing yet. Ask now and give the answer time to come.
    ping(c);
    c.silenceTimer = setTimeout(() => silence(c), Math.min(timeout, 10000));
    return;
  }
  abort(c, `no answer from the server for ${Math.round(silent / 1000)} s`);
}

function ping(c) {
  c.lastPing = now();
  c.beats += 1;
  send(c, `/ping ${HEARTBEAT_TOKEN}${c.beats}`);
}

// -- sending, paced --------------------------------------------------------------------

// Stay just under the server's announced rate, so it never holds us back.
function makeBucket(limits) {
  if (!limits || !(Number(limits.rate) > 0)) return null;
  const capacity = Math.max(1, Number(limits.burst || 1) - 2); // setup lines used some
  return { rate: 0.9 * Number(limits.rate), capacity, tokens: capacity, at: now() };
}

function bucketWait(bucket) {
  if (!bucket) return 0;
  const t = now();
  bucket.tokens = Math.min(bucket.capacity, bucket.tokens + ((t - bucket.at) / 1000) * bucket.rate);
  bucket.at = t;
  return bucket.tokens >= 1 ? 0 : ((1 - bucket.tokens) / bucket.rate) * 1000;
}

// The next line to send, without sending it: our own lines first, then the user's
// (only once the session is restored), each preceded by a /join when the server's
// current room is not the one the line was typed in.
function nextLine(c) {
  if (c.control.length) return { kind: "control", item: c.control[0] };
  if (!c.restored) return null;
  if (state.outbox.length) {
    const item = state.outbox[0];
    if (item.room && !same(c.askedCurrent, item.room) && state.rooms.has(keyOf(item.room))) {
      return { kind: "follow", room: item.room };
    }
    return { kind: "user", item };
  }
  // The user moved to a room on screen: make it the server's current room too.
  if (c.follow && !same(c.askedCurrent, c.follow) && state.rooms.has(keyOf(c.follow))) {
    return { kind: "follow", room: c.follow };
  }
  c.follow = null;
  return null;
}

function pump() {
  const c = conn;
  if (!c || c.closed || !c.welcomed) return;
  clearTimeout(c.pumpTimer);
  c.pumpTimer = null;
  for (;;) {
    const next = nextLine(c);
    if (!next) return;
    const wait = bucketWait(c.bucket);
    if (wait > 0) {
      c.pumpTimer = setTimeout(pump, Math.max(wait, 5));
      return;
    }
    if (c.bucket) c.bucket.tokens -= 1;
    if (next.kind === "control") {
      c.control.shift();
      if (!send(c, next.item.line)) return;
      if (next.item.sent) next.item.sent();
    } else if (next.kind === "follow") {
      if (!send(c, `/join ${next.room}`)) return;
      c.askedCurrent = next.room;
      c.autoJoins.push(keyOf(next.room));
      if (same(c.follow, next.room)) c.follow = null;
    } else {
      state.outbox.shift();
      if (!send(c, next.item.line)) {
        state.outbox.unshift(next.item);
        return;
      }
      userLineSent(c, next.item);
    }
  }
}

function control(line, sent) {
  if (!conn) return;
  conn.control.push({ line, sent });
  pump();
}

function queueWho(room) {
  const c = conn;
  if (!c || !c.restored) return;
  if (c.control.some((item) => item.line === `/who ${room}`)) return;
  control(`/who ${room}`);
}

// Whether someone can see the list of other rooms: the sidebar is a column on a wide
// screen, a drawer on a phone.
function roomsOnScreen() {
  return !document.hidden && (!narrow() || document.body.classList.contains("sidebar-open"));
}

// The list of rooms, asked for when it is wanted (a timer while it is on screen, the
// drawer opening, our own join or part) but at most once per ROOMS_MIN_GAP_MS (a burst
// of reasons makes one /rooms, later); at once when allowed (a background tab may run
// a timer late).  Ten seconds keep it well inside the line rate, with the heartbeat.
function requestRooms(delay = 300) {
  if (roomsTimer) return;
  const wait = Math.max(delay, lastRoomsAt + ROOMS_MIN_GAP_MS - now());
  if (wait <= 0) {
    askRooms();
    return;
  }
  roomsTimer = setTimeout(() => {
    roomsTimer = null;
    askRooms();
  }, wait);
}

function askRooms() {
  const c = conn;
  if (!c || !c.restored) return;
  lastRoomsAt = now();
  control("/rooms", () => c.roomsAsked.push(false));
}

// A user's line as it goes out: what it will change on the server, and the echo of a
// message (the server does not send our own messages back).
function userLineSent(c, item) {
  const line = item.line;
  const trimmed = line.trimStart();
  const [word, ...rest] = trimmed.split(/\s+/);
  const command = trimmed.startsWith("/") && !trimmed.startsWith("//") ? word.toLowerCase() : null;
  if (command === "/join" && rest[0]) c.askedCurrent = roomName(rest[0]);
  else if (command === "/part")
    c.askedCurrent = null; // the server picks; it will say
  else if (command === "/who" || command === "/names")
    c.whoAsked.push(rest[0] ? keyOf(roomName(rest[0])) : null);
  else if ((command === "/rooms" || command === "/list") && !rest[0]) c.roomsAsked.push(true);
  else if (command === "/quit") c.quitting = true;
  if (!item.echo) return;
  const room = c.askedCurrent;
  const view = room ? roomView(room) : null;
  const nick = state.nick || "?";
  let entry = null;
  let text = "";
  if (command === "/me") {
    text = trimmed.slice(4).trim();
    entry = chatEntry(nowTs(), nick, text, { action: true, own: true });
  } else if (!command) {
    text = trimmed.startsWith("//") ? line.trimStart().slice(1) : line;
    entry = chatEntry(nowTs(), nick, text, { own: true });
  }
  if (!entry) return;
  const target = view || hereView();
  // Known by its text too: the history replayed after a reconnect has it again.
  markSeen(target, entry, [`own ${keyOf(nick)} ${str(text).trim()}`]);
  addEntry(target, entry, { own: true });
}

// -- what the user types ----------------------------------------------------------------

// ``typed``: the user typed it (Up brings it back); otherwise a button made it.
function submitLine(raw, { typed = true } = {}) {
  const line = raw.replace(/[\r\n]+/g, " ");
  if (!line.trim()) return true;
  const trimmed = line.trimStart();
  const isCommand = trimmed.startsWith("/") && !trimmed.startsWith("//");
  const [first, ...args] = trimmed.split(/\s+/);
  const command = isCommand ? first.toLowerCase() : null;
  const view = views.get(state.active);

  if (command === "/login") {
    const [name, password] = args;
    if ((conn && conn.loginRequired && !conn.welcomed) || (!conn && holdForLogin)) {
      if (!name || !password) {
        problem("Usage: /login NAME PASSWORD");
        return false;
      }
      logIn(name, password);
      return true;
    }
    // Otherwise the server answers for itself (not-needed).
  } else if (typed) {
    remember(line);
  }
  if (command === "/quit") {
    quit(trimmed.slice(5).trim());
    return true;
  }
  if (command === "/format") {
    problem("This page always uses the JSON rendering; /format is for telnet.");
    return true;
  }
  if (command === "/me" && view.kind === "pm") {
    problem("/me is for rooms; in a private conversation, just type.");
    return false;
  }

  let out;
  if (command === "/history" && view.kind !== "server" && (!args[0] || /^\d+$/.test(args[0]))) {
    // Without a name, /history means the conversation on screen (and its answer goes
    // there): say which, rather than rely on the server's current room.
    const asked = ["/history", viewTarget(view), ...args.filter(Boolean)].join(" ");
    out = { line: asked, room: null, echo: false };
  } else if (view.kind === "pm" && !isCommand) {
    const pm = state.pms.get(view.key);
    const text = trimmed.startsWith("//") ? trimmed.slice(1) : line;
    out = { line: `/msg ${pm.nick} ${text}`, room: null, echo: false };
  } else if (view.kind === "room") {
    // These mean the room on screen; a /join or /nick goes wherever the server is.
    const here = !isCommand || ["/me", "/part", "/who", "/names"].includes(command);
    out = { line, room: here ? activeRoom() : null, echo: !isCommand || command === "/me" };
  } else {
    out = { line, room: null, echo: !isCommand || command === "/me" };
  }
  const size = byteLength(out.line);
  if (size > state.maxLine) {
    problem(
      `Not sent: that line is ${size} bytes, longer than the server's limit of ${state.maxLine}.`,
    );
    return false;
  }
  if (state.outbox.length >= OUTBOX_MAX) {
    problem(`Not sent: ${state.outbox.length} lines are already waiting for the connection.`);
    return false;
  }
  if (command === "/nick" && conn) clearTimeout(conn.nickRetry); // the user's choice wins
  state.outbox.push(out);
  if (!conn || !conn.welcomed) {
    const waiting = state.outbox.length > 1 ? ` (${state.outbox.length} lines waiting)` : "";
    const when = wantConnected
      ? "sent when the connection is back"
      : "you left the chat; sent if you connect again (the button at the top)";
    notice(hereView(), `Not connected: ${when}${waiting}.`);
  }
  pump();
  return true;
}

function remember(line) {
  if (state.history[state.history.length - 1] !== line) state.history.push(line);
  if (state.history.length > HISTORY_MAX) state.history.shift();
  state.historyAt = -1;
}

function quit(reason) {
  wantConnected = false;
  clearTimeout(reconnect.timer);
  clearInterval(reconnect.tick);
  const c = conn;
  if (!c || !c.welcomed) {
    if (c) abort(c, "you left");
    state.outbox = [];
    setStatus("offline", "Offline: you left the chat");
    return;
  }
  c.quitting = true;
  const line = `/quit ${reason}`.trim();
  if (c.restored) {
    state.outbox.push({
      line: byteLength(line) > state.maxLine ? "/quit" : line,
      room: null,
      echo: false,
    });
  } else {
    state.outbox = [];
    c.control.push({ line: "/quit" });
  }
  pump();
  setStatus("connecting", "Leaving…");
  // The server answers with bye and closes; do not wait for ever if it does not.
  setTimeout(() => {
    if (!c.closed) abort(c, "you left");
  }, 5000);
}

function logIn(name, password) {
  state.creds = { name, password };
  showLoginError("");
  if (conn && conn.loginRequired && !conn.welcomed && !conn.closed) {
    conn.loginSent = true;
    conn.autoLogin = false;
    $("login-submit").disabled = true;
    send(conn, `/login ${name} ${password}`);
    setStatus("login", "Logging in…");
  } else if (!conn) {
    // The server hung up on the unfinished login: start again, and log in when asked.
    reconnect.attempt = 0;
    connect();
  }
}

// -- what the server says -----------------------------------------------------------------

function handle(c, event) {
  if (!c.welcomed && event.type !== "welcome") {
    beforeWelcome(c, event);
    return;
  }
  switch (event.type) {
    case "welcome":
      return welcomed(c, event);
    case "message":
    case "action":
      return roomText(event);
    case "private":
      return privateText(event);
    case "join":
      return joined(c, event);
    case "part":
      return parted(c, event);
    case "quit":
    case "timeout":
    case "disconnect":
      return gone(event);
    case "nick":
      return renamed(c, event);
    case "current":
      return current(c, event);
    case "crowd":
      return crowd(event);
    case "members":
      return members(c, event);
    case "rooms":
      return roomsListed(c, event);
    case "help":
      return help(event);
    case "history":
      return historyShown(event);
    case "pong":
      return pong(c, event);
    case "error":
      return serverError(c, event);
    case "slow-down":
      return notice(
        hereView(),
        `Slow down: you are sending faster than ${str(event.rate)} lines a second; ` +
          (event.waiting === 1
            ? "1 line is waiting and goes"
            : `${str(event.waiting)} lines are waiting and go`) +
          " out at that rate.",
        event.ts,
      );
    case "idle":
      ping(c); // we should have been pinging; make up for it at once
      return notice(
        hereView(),
        `You have been silent for ${str(event.idle)} s: the page is sending a heartbeat now.`,
        event.ts,
      );
    case "bye":
      c.bye = str(event.reason) || "the server closed the connection";
      return notice(hereView(), `Disconnected by the server: ${c.bye}`, event.ts);
    case "shutdown":
      c.shutdown = str(event.reason) || "the server is stopping";
      return notice(hereView(), `Server shutting down: ${c.shutdown}`, event.ts);
    case "network":
      return notice(hereView(), `Network: ${str(event.message)}`, event.ts);
    case "login-required":
      return undefined; // only before the welcome
    default:
      return undefined; // a newer server's event: nothing to show
  }
}

function beforeWelcome(c, event) {
  switch (event.type) {
    case "login-required":
      c.loginRequired = true;
      loginRequired(c, event);
      return;
    case "error": {
      const code = str(event.code);
      const message = str(event.message);
      if (code === "login-required") return; // answers to our setup lines: expected
      c.loginSent = false;
      $("login-submit").disabled = false;
      if (code === "login-in-use" && c.autoLogin && c.loginRetries < 5) {
        // Most likely our own previous connection, until the server notices it is gone.
        c.loginRetries += 1;
        setStatus("login", `${message}; trying again`);
        setTimeout(() => {
          if (conn === c && !c.closed && !c.welcomed && state.creds) {
            c.loginSent = true;
            send(c, `/login ${state.creds.name} ${state.creds.password}`);
          }
        }, 3000);
        return;
      }
      if (code === "login-failed" && state.creds)
        state.creds = { name: state.creds.name, password: null };
      if (code === "login-refused") c.fatal = message;
      showLogin(c);
      showLoginError(message);
      return;
    }
    case "bye": {
      c.bye = str(event.reason) || "the server closed the connection";
      if (c.loginRequired) {
        // Reconnecting by ourselves would only ask again: wait for the user.
        holdForLogin = !c.fatal;
        showLogin(c);
        showLoginError(`Disconnected: ${c.bye}`);
      }
      return;
    }
    case "shutdown":
      c.shutdown = str(event.reason) || "the server is stopping";
      return;
    default:
      return; // a pong, and nothing else is expected here
  }
}

function loginRequired(c, event) {
  const creds = state.creds;
  if (creds && creds.password && !c.loginSent) {
    c.loginSent = true;
    c.autoLogin = true;
    $("login-submit").disabled = true;
    send(c, `/login ${creds.name} ${creds.password}`);
    setStatus("login", "Logging in…");
    return;
  }
  if (c.loginSent) return;
  const attempts = Number(event.attempts);
  $("login-info").textContent = Number.isFinite(attempts)
    ? `This server needs a login (${attempts} ${attempts === 1 ? "attempt" : "attempts"} left).`
    : "This server needs a login.";
  showLogin(c);
  setStatus("login", "Waiting for you to log in");
}

function showLogin(c) {
  const overlay = $("login");
  const wasHidden = overlay.hidden;
  overlay.hidden = false;
  document.body.classList.add("login-open");
  closeDrawers();
  for (const node of document.querySelectorAll(".topbar, .layout, #nick-form")) node.inert = true;
  $("login-submit").disabled = Boolean(c && c.loginSent);
  const name = $("login-name");
  if (!name.value && state.creds) name.value = state.creds.name;
  if (wasHidden || !overlay.contains(document.activeElement)) {
    (name.value ? $("login-password") : name).focus();
  }
}

function hideLogin() {
  const hadFocus = $("login").contains(document.activeElement);
  $("login").hidden = true;
  document.body.classList.remove("login-open");
  for (const node of document.querySelectorAll(".topbar, .layout, #nick-form")) node.inert = false;
  $("login-password").value = "";
  showLoginError("");
  if (hadFocus) $("composer-input").focus();
}

function showLoginError(text) {
  const node = $("login-error");
  node.textContent = text;
  node.hidden = !text;
  if (text) {
    $("login-password").value = "";
    if (!$("login").hidden) $("login-password").focus();
  }
}

function welcomed(c, welcome) {
  c.welcomed = true;
  const hb = welcome.heartbeat || {};
  if (Number(hb.interval) > 0) state.heartbeat.interval = Number(hb.interval);
  if (Number(hb.timeout) > 0) state.heartbeat.timeout = Number(hb.timeout);
  if (Number.isInteger(welcome.max_line) && welcome.max_line > 0) state.maxLine = welcome.max_line;
  state.limits = welcome.limits || null;
  c.bucket = makeBucket(state.limits);
  armHeartbeat(c); // on the interval and timeout just announced
  state.loggedIn = Boolean(welcome.logged_in);
  state.nick = str(welcome.nick);
  // A guest name is not asked for again: a new connection gets a new one.
  if (state.loggedIn) state.wantedNick = state.nick;
  holdForLogin = false;
  hideLogin();
  renderMe();

  const have = Array.isArray(welcome.rooms) ? welcome.rooms.map(str) : [];
  const previousCurrent = state.serverCurrent;
  state.serverCurrent = welcome.current ? str(welcome.current) : null;
  c.confirmed = new Set(have.map(keyOf));
  const restoring = state.everConnected;
  const commands = [];
  if (!state.loggedIn && state.wantedNick && !same(state.wantedNick, state.nick)) {
    c.restoringNick = state.wantedNick;
    // Asked for before the greeting: its answer (an error) follows the welcome.
    if (!same(c.setupNick, state.wantedNick)) commands.push(`/nick ${state.wantedNick}`);
  }
  if (restoring) {
    const wanted = [...state.rooms.values()].map((room) => room.name);
    for (const room of wanted) if (!have.some((r) => same(r, room))) commands.push(`/join ${room}`);
    for (const room of have) if (!wanted.some((r) => same(r, room))) commands.push(`/part ${room}`);
    const target =
      activeRoom() || (wanted.some((r) => same(r, previousCurrent)) ? previousCurrent : wanted[0]);
    const moved = !same(welcome.current, target);
    const rejoin = commands.some((line) => line.startsWith("/join ") || line.startsWith("/part "));
    if (target && (moved || rejoin) && commands[commands.length - 1] !== `/join ${target}`) {
      commands.push(`/join ${target}`);
    }
  } else {
    for (const room of have) ensureRoom(room);
  }
  // The restore ends with a ping: its pong means every command above was answered, so
  // the user's lines go out under the right name, in the right room.
  c.barrier = `${RESTORE_TOKEN}${now()}`;
  for (const line of commands) c.control.push({ line });
  c.control.push({ line: `/ping ${c.barrier}` });
  setStatus("connecting", restoring ? "Connected, restoring your rooms…" : "Connected, joining…");
  state.everConnected = true;
  renderLists();
  pump();
}

function restoredNow(c) {
  c.barrier = null;
  c.restored = true;
  c.askedCurrent = state.serverCurrent; // every restoring line is answered: this is true
  reconnect.attempt = 0;
  for (const event of c.restoreErrors) problem(str(event.message), event.ts);
  c.restoreErrors = [];
  // A room we could not get back (the server's limits, say) is one we are not in.
  for (const room of [...state.rooms.values()]) {
    if (!c.confirmed.has(keyOf(room.name))) {
      dropRoom(room.name);
      notice(hereView(), `Could not rejoin ${room.name}.`);
    }
  }
  // First where we are, then what else was joined, each in its own room's view.
  const currentRoom = c.askedCurrent ? state.rooms.get(keyOf(c.askedCurrent)) : null;
  const here = currentRoom ? roomCount(currentRoom) : null;
  const count = here !== null ? ` (${here} here)` : "";
  const where = c.askedCurrent ? ` in ${c.askedCurrent}${count}` : "";
  setStatus("connected", `Connected as ${state.nick}`);
  const said = hereView();
  notice(said, `${c.reconnected ? "Reconnected" : "Connected"} as ${state.nick}${where}.`);
  for (const [key, { text, ts }] of c.restoreJoins) {
    const view = views.get(`room:${key}`);
    if (view && view !== said) notice(view, text, ts);
  }
  c.restoreJoins.clear();
  const room = activeRoom();
  if (room) queueWho(room);
  clearTimeout(roomsTimer); // one asked for while restoring waited for this
  roomsTimer = null;
  requestRooms(0);
  saveState();
  pump();
}

function roomText(event) {
  const name = str(event.room);
  const key = keyOf(name);
  if (!state.rooms.has(key)) ensureRoom(name);
  const view = views.get(`room:${key}`);
  const nick = str(event.nick);
  const text = str(event.text);
  const entry = chatEntry(event.ts, nick, text, { action: event.type === "action" });
  markSeen(view, entry, lineKeys(event.ts, nick, text));
  addEntry(view, entry, { unread: true });
}

function privateText(event) {
  const from = str(event.from);
  const to = str(event.to);
  const peer = isMe(from) ? to : from;
  ensurePm(peer);
  const view = views.get(`pm:${keyOf(peer)}`);
  const own = isMe(from);
  const text = str(event.text);
  const entry = chatEntry(event.ts, from, text, { own });
  markSeen(view, entry, lineKeys(event.ts, from, text));
  addEntry(view, entry, { unread: !own, own });
  if (own && state.active !== view.id) {
    notice(hereView(), `Private message sent to ${peer} (see “${peer}” under Private).`, event.ts);
  }
  renderLists();
  saveState();
}

// Whether the connection is still being set up (seated, its nickname and rooms
// restored): what that does is said once, when it is done (restoredNow), not line by
// line in whatever view is on screen.
function settingUp(c) {
  return Boolean(c && c.welcomed && !c.restored);
}

function joined(c, event) {
  const name = str(event.room);
  const nick = str(event.nick);
  const count = Number.isInteger(event.count) ? event.count : null;
  if (isMe(nick)) {
    const known = state.rooms.has(keyOf(name));
    if (conn && conn.confirmed) conn.confirmed.add(keyOf(name));
    const room = ensureRoom(name);
    room.name = name;
    room.count = count;
    room.members = null; // the members list follows
    const text = `You joined ${name}${count !== null ? ` (${count} here)` : ""}.`;
    if (settingUp(c)) c.restoreJoins.set(keyOf(name), { text, ts: event.ts });
    else notice(roomView(name), text, event.ts);
    if (!known) saveState();
    requestRooms();
  } else {
    const room = state.rooms.get(keyOf(name));
    if (!room) return;
    if (Array.isArray(room.members) && !room.members.some((m) => same(m, nick)))
      room.members.push(nick);
    room.count = count;
    notice(roomView(name), `${nick} joined${count !== null ? ` (${count} here)` : ""}`, event.ts);
  }
  renderLists();
  renderMembers();
}

function removeMember(room, nick) {
  if (Array.isArray(room.members)) {
    const before = room.members.length;
    room.members = room.members.filter((m) => !same(m, nick));
    if (room.members.length < before) room.count = room.members.length;
  } else if (Number.isInteger(room.count) && room.count > 0) {
    room.count -= 1;
  }
}

function parted(c, event) {
  const name = str(event.room);
  const nick = str(event.nick);
  const reason = str(event.reason);
  const why = reason ? ` (${reason})` : "";
  if (isMe(nick)) {
    const wasActive = state.active === `room:${keyOf(name)}`;
    const room = state.rooms.get(keyOf(name));
    if (room) leftInDirectory(name, roomCount(room));
    dropRoom(name);
    // Restoring, we only leave what the user had left already (where the server
    // seated us): no news.
    if (!settingUp(c)) notice(hereView(), `You left ${name}${why}.`, event.ts);
    if (wasActive) $("composer-input").focus();
    saveState();
    requestRooms();
  } else {
    const room = state.rooms.get(keyOf(name));
    if (!room) return;
    removeMember(room, nick);
    notice(roomView(name), `${nick} left${why}`, event.ts);
  }
  renderLists();
  renderMembers();
}

// We left a room of ``count`` members (us included): it shows among the other rooms
// at once, with one member fewer, or not at all if that was the last (only #lobby
// stays, empty).  The /rooms that follows corrects what we could not know.
function leftInDirectory(name, count) {
  const directory = state.directory;
  if (!directory.known || !Number.isInteger(count)) return;
  const left = Math.max(0, count - 1);
  const index = directory.rooms.findIndex((r) => same(r.room, name));
  if (left === 0 && !same(name, "#lobby")) {
    if (index >= 0) {
      directory.rooms.splice(index, 1);
      directory.total = Math.max(directory.rooms.length, directory.total - 1);
    }
    return;
  }
  if (index >= 0) {
    directory.rooms[index].count = left;
  } else {
    if (directory.rooms.length >= directory.total) directory.total += 1; // a room new to it
    directory.rooms.push({ room: name, count: left });
  }
  // The server's order: largest first, then by name.
  directory.rooms.sort((a, b) => b.count - a.count || keyOf(a.room).localeCompare(keyOf(b.room)));
}

function gone(event) {
  const nick = str(event.nick);
  const rooms =
    Array.isArray(event.rooms) && event.rooms.length ? event.rooms.map(str) : [str(event.room)];
  let text;
  if (event.type === "quit") {
    const reason = str(event.reason);
    text = `${nick} quit${reason ? ` (${reason})` : ""}`;
  } else if (event.type === "timeout") {
    text = `${nick} timed out (no heartbeat for ${str(event.after)} s)`;
  } else {
    const reason = str(event.reason);
    text = `${nick} lost connection${reason ? ` (${reason})` : ""}`;
  }
  for (const name of rooms) {
    const room = state.rooms.get(keyOf(name));
    if (!room) continue;
    removeMember(room, nick);
    notice(roomView(name), text, event.ts);
  }
  const pmView = views.get(`pm:${keyOf(nick)}`);
  if (pmView) notice(pmView, text, event.ts);
  renderLists();
  renderMembers();
}

function renamed(c, event) {
  const old = str(event.old);
  const nick = str(event.new);
  const text = `${old} is now known as ${nick}`;
  if (isMe(old)) {
    state.nick = nick;
    state.wantedNick = nick;
    if (same(c.restoringNick, nick)) {
      c.restoringNick = null;
      clearTimeout(c.nickRetry);
    }
    renderMe();
    closeNickForm({ focus: $("nick-form").contains(document.activeElement) });
    if (c.restored) setStatus("connected", `Connected as ${nick}`);
    saveState();
  }
  for (const [key, room] of state.rooms) {
    if (!Array.isArray(room.members)) continue;
    const index = room.members.findIndex((m) => same(m, old));
    if (index < 0) continue;
    room.members[index] = nick;
    if (!isMe(nick)) notice(views.get(`room:${key}`), text, event.ts); // ours: said once below
  }
  const oldKey = keyOf(old);
  const pm = state.pms.get(oldKey);
  if (pm && !isMe(nick)) {
    const newKey = keyOf(nick);
    const view = views.get(`pm:${oldKey}`);
    if (oldKey !== newKey && !state.pms.has(newKey)) {
      state.pms.delete(oldKey);
      state.pms.set(newKey, { ...pm, nick });
      views.delete(view.id);
      view.id = `pm:${newKey}`;
      view.key = newKey;
      views.set(view.id, view);
      if (state.active === `pm:${oldKey}`) state.active = view.id;
    } else {
      pm.nick = nick;
    }
    notice(view, text, event.ts);
  }
  // Restoring, our name is the one we had: the "Connected as" line says it.
  if (isMe(nick) && !settingUp(c)) notice(hereView(), `You are now known as ${nick}.`, event.ts);
  renderLists();
  renderMembers();
  updateTitle();
}

function current(c, event) {
  const name = event.room ? str(event.room) : null;
  state.serverCurrent = name;
  if (c.autoJoins.length) {
    // Our own /join, following the view on screen: the screen is already there, or has
    // moved on (and another /join follows it).
    if (name && c.autoJoins[0] === keyOf(name)) c.autoJoins.shift();
    return;
  }
  if (!c.restored && c.reconnected) return; // restoring: the screen stays where it was
  c.askedCurrent = name;
  if (name) {
    ensureRoom(name);
    const typing = document.activeElement === $("composer-input");
    activate(`room:${keyOf(name)}`, { focus: typing, follow: false });
  } else {
    notice(hereView(), "You are in no room now: join one to talk.", event.ts);
    if (views.get(state.active)?.kind === "room") activate("server");
  }
  saveState();
}

function crowd(event) {
  const name = str(event.room);
  const room = state.rooms.get(keyOf(name));
  if (!room) return;
  const list = (value) => (Array.isArray(value) ? value.map(str) : []);
  const joinedNames = list(event.joined);
  const leftNames = list(event.left);
  const renamedPairs = Array.isArray(event.renamed)
    ? event.renamed
        .filter((p) => Array.isArray(p) && p.length === 2)
        .map((p) => [str(p[0]), str(p[1])])
    : [];
  const num = (v) => (Number.isInteger(v) ? v : 0);
  const complete =
    num(event.joined_count) <= joinedNames.length &&
    num(event.left_count) <= leftNames.length &&
    num(event.renamed_count) <= renamedPairs.length;
  if (Array.isArray(room.members) && complete) {
    room.members = room.members.filter((m) => !leftNames.some((n) => same(n, m)));
    for (const [from, to] of renamedPairs)
      room.members = room.members.map((m) => (same(m, from) ? to : m));
    for (const n of joinedNames) if (!room.members.some((m) => same(m, n))) room.members.push(n);
  } else {
    room.members = null; // too many changes to follow name by name: ask again
    if (state.active === `room:${keyOf(name)}`) queueWho(room.name);
  }
  if (Number.isInteger(event.count)) room.count = event.count;
  const part = (names, total, verb) => {
    if (!total) return null;
    const extra = total - names.length;
    return `${total} ${verb}: ${names.join(", ")}${extra > 0 ? ` (+${extra})` : ""}`;
  };
  const renamedText = renamedPairs.map(([a, b]) => `${a} → ${b}`);
  const parts = [
    part(joinedNames, num(event.joined_count), "joined"),
    part(leftNames, num(event.left_count), "left"),
    part(renamedText, num(event.renamed_count), "renamed"),
  ].filter(Boolean);
  notice(
    roomView(name),
    `${parts.join("; ")}${parts.length ? "; " : ""}${str(event.count)} here`,
    event.ts,
  );
  renderLists();
  renderMembers();
}

function members(c, event) {
  const name = str(event.room);
  const list = Array.isArray(event.members) ? event.members.map(str) : [];
  const room = state.rooms.get(keyOf(name));
  if (room) {
    room.members = list;
    room.count = list.length;
    room.membersAt = now();
  }
  // Shown in the log only when the user typed /who; ours just refresh the list.
  const asked = c.whoAsked[0];
  if (c.whoAsked.length && (asked === null || asked === keyOf(name))) {
    c.whoAsked.shift();
    const shown = list.slice(0, 100).join(", ");
    const more = list.length > 100 ? ` and ${list.length - 100} more` : "";
    notice(hereView(), `${name}: ${list.length} here: ${shown}${more}`, event.ts);
  }
  renderLists();
  renderMembers();
}

function roomsListed(c, event) {
  const rooms = Array.isArray(event.rooms)
    ? event.rooms
        .filter((r) => r && typeof r === "object")
        .map((r) => ({ room: str(r.room), count: Number(r.count) || 0 }))
    : [];
  const query = event.query ? str(event.query) : null;
  const total = Number.isInteger(event.total) ? event.total : rooms.length;
  for (const r of rooms) {
    const mine = state.rooms.get(keyOf(r.room));
    if (mine && !Array.isArray(mine.members)) mine.count = r.count;
  }
  let byUser = true;
  if (!query) {
    state.directory = { rooms, total, known: true };
    byUser = c.roomsAsked.length ? c.roomsAsked.shift() : true;
  }
  renderLists();
  if (!byUser) return;
  const label = query ? `Rooms matching “${query}”` : "Rooms";
  const listed = rooms.map((r) => `${r.room} (${r.count})`).join(", ") || "none";
  const more = total - rooms.length;
  const tail = more > 0 ? ` and ${more} more${query ? "" : " (/rooms TEXT to search)"}` : "";
  notice(hereView(), `${label}: ${listed}${tail}`, event.ts);
}

function help(event) {
  const li = entryShell("notice help", event.ts);
  li.append(el("span", "text", "Commands:"));
  const table = el("dl", "help-list");
  for (const command of Array.isArray(event.commands) ? event.commands : []) {
    if (!command || typeof command !== "object") continue;
    const usage = str(command.usage);
    if (/^\/format\b/i.test(usage)) continue; // the page speaks JSON and refuses it
    table.append(el("dt", null, usage), el("dd", null, str(command.help)));
  }
  li.append(table);
  addEntry(hereView(), li);
}

function pong(c, event) {
  const token = str(event.token);
  if (c.barrier && token === c.barrier) {
    restoredNow(c);
    return;
  }
  if (token.startsWith(OLDER_TOKEN)) {
    for (const view of views.values()) if (view.olderToken === token) olderAnswered(view);
    return;
  }
  if (token.startsWith(HEARTBEAT_TOKEN) || token.startsWith(RESTORE_TOKEN)) return;
  notice(hereView(), `pong${token ? ` ${token}` : ""}`, event.ts);
}

function serverError(c, event) {
  const code = str(event.code);
  const message = str(event.message);
  if (c.restoringNick && code.startsWith("nick-")) {
    restoreNickRefused(c, code, message);
    return;
  }
  if (!c.restored && c.barrier) {
    c.restoreErrors.push(event); // shown once the restore is done
    return;
  }
  if (code.startsWith("nick-") && !$("nick-form").hidden) {
    const node = $("nick-error");
    node.textContent = message;
    node.hidden = false;
    $("nick-input").focus();
    return;
  }
  problem(message || code, event.ts);
}

// Our previous connection may hold the nickname until the server notices it is gone.
function restoreNickRefused(c, code, message) {
  const wanted = c.restoringNick;
  const wait = Math.max(1, Math.min(5, state.heartbeat.timeout / 4)) * 1000;
  if (
    code === "nick-taken" &&
    c.reconnected &&
    (c.nickAttempts + 1) * wait <= state.heartbeat.timeout * 2000
  ) {
    c.nickAttempts += 1;
    if (c.nickAttempts === 1) {
      notice(
        hereView(),
        `The nickname ${wanted} is taken (perhaps still by our previous connection, until ` +
          `the server notices it is gone); retrying. Meanwhile you are ${state.nick}.`,
      );
    }
    c.nickRetry = setTimeout(() => {
      if (conn === c && c.restoringNick) control(`/nick ${c.restoringNick}`);
    }, wait);
    return;
  }
  c.restoringNick = null;
  state.wantedNick = null;
  problem(message);
  notice(
    hereView(),
    `You are chatting as ${state.nick}; pick another name with the button at the top, or /nick NAME.`,
  );
  renderMe();
  saveState();
}

// -- forms and keys ------------------------------------------------------------------------

const NARROW = window.matchMedia("(max-width: 760px)"); // as in style.css

function narrow() {
  return NARROW.matches;
}

const DRAWERS = { sidebar: "toggle-sidebar", members: "toggle-members" };

// The drawer open on a phone-sized screen ("sidebar", "members"), or null.
function openDrawer() {
  if (!narrow()) return null;
  for (const name of Object.keys(DRAWERS))
    if (document.body.classList.contains(`${name}-open`)) return name;
  return null;
}

// An open drawer is modal: the page behind it is dimmed (a tap there closes it) and
// inert, so focus and screen readers stay in the drawer until it closes.
function syncDrawers() {
  const open = openDrawer();
  const login = !$("login").hidden; // the login form holds the page inert itself
  $("drawer-backdrop").hidden = !open;
  for (const node of document.querySelectorAll(".topbar, #nick-form"))
    node.inert = login || Boolean(open);
  document.querySelector(".conversation").inert = Boolean(open);
  for (const name of Object.keys(DRAWERS)) $(name).inert = Boolean(open) && open !== name;
}

function setDrawer(name, open) {
  document.body.classList.toggle(`${name}-open`, open);
  $(DRAWERS[name]).setAttribute("aria-expanded", String(open));
}

// ``focusToggle``: give the focus back to the button that opened the drawer (when the
// drawer closes by itself, something else takes the focus).
function closeDrawers({ focusToggle = false } = {}) {
  const was = openDrawer();
  setDrawer("sidebar", false);
  setDrawer("members", false);
  syncDrawers();
  if (focusToggle && was) {
    const toggle = $(DRAWERS[was]);
    if (toggle.offsetParent !== null) toggle.focus();
    else $("composer-input").focus();
  }
}

function showDrawer(name) {
  for (const other of Object.keys(DRAWERS)) setDrawer(other, other === name);
  syncDrawers();
  const drawer = $(name);
  const first =
    name === "sidebar"
      ? drawer.querySelector("[aria-current='true']")
      : $("member-list").querySelector("button");
  (first || drawer.querySelector(".drawer-close")).focus();
  if (name === "sidebar") requestRooms(0); // the list of other rooms, fresh
}

function toggleDrawer(name) {
  if (document.body.classList.contains(`${name}-open`)) closeDrawers({ focusToggle: true });
  else showDrawer(name);
}

function openNickForm() {
  if (state.loggedIn) return;
  const form = $("nick-form");
  form.hidden = false;
  $("nick-button").setAttribute("aria-expanded", "true");
  $("nick-error").hidden = true;
  const input = $("nick-input");
  input.value = state.nick || "";
  input.focus();
  input.select();
}

function closeNickForm({ focus = false } = {}) {
  const form = $("nick-form");
  if (form.hidden) return;
  form.hidden = true;
  $("nick-button").setAttribute("aria-expanded", "false");
  if (focus) $("composer-input").focus();
}

function moveFocus(container, selector, event) {
  const items = [...container.querySelectorAll(selector)].filter(
    (node) => node.offsetParent !== null,
  );
  const index = items.indexOf(document.activeElement);
  let next = null;
  if (event.key === "ArrowDown") next = items[Math.min(items.length - 1, index + 1)];
  else if (event.key === "ArrowUp") next = items[Math.max(0, index - 1)];
  else if (event.key === "Home") next = items[0];
  else if (event.key === "End") next = items[items.length - 1];
  if (next) {
    event.preventDefault();
    next.focus();
  }
}

function orderedViews() {
  const ids = [];
  for (const node of $("sidebar").querySelectorAll("button.view-item[data-view]"))
    ids.push(node.dataset.view);
  return ids;
}

function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("composer-input");
    if (submitLine(input.value)) input.value = "";
  });

  $("composer-input").addEventListener("keydown", (event) => {
    const input = event.currentTarget;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowUp" && state.history.length) {
      if (state.historyAt === -1) {
        if (input.value && input.value !== state.history[state.history.length - 1]) return;
        state.historyDraft = input.value;
        state.historyAt = state.history.length;
      }
      if (state.historyAt > 0) state.historyAt -= 1;
      input.value = state.history[state.historyAt];
      event.preventDefault();
    } else if (event.key === "ArrowDown" && state.historyAt !== -1) {
      state.historyAt += 1;
      if (state.historyAt >= state.history.length) {
        state.historyAt = -1;
        input.value = state.historyDraft;
      } else {
        input.value = state.history[state.historyAt];
      }
      event.preventDefault();
    } else if (event.key === "Escape" && input.value) {
      input.value = "";
      state.historyAt = -1;
    }
  });
  $("composer-input").addEventListener("input", () => {
    state.historyAt = -1;
  });

  $("sidebar").addEventListener("click", (event) => {
    const close = event.target.closest("button.close-pm");
    if (close) {
      const key = close.dataset.key;
      state.pms.delete(key);
      dropView(`pm:${key}`);
      renderLists();
      saveState();
      return;
    }
    const join = event.target.closest("button.join-item");
    if (join) {
      submitLine(`/join ${join.dataset.room}`, { typed: false });
      closeDrawers();
      $("composer-input").focus();
      return;
    }
    const item = event.target.closest("button.view-item[data-view]");
    if (item) activate(item.dataset.view, { focus: true });
  });
  $("sidebar").addEventListener("keydown", (event) => {
    if (
      ["ArrowDown", "ArrowUp", "Home", "End"].includes(event.key) &&
      event.target.matches("button.view-item")
    ) {
      moveFocus($("sidebar"), "button.view-item", event);
    }
  });

  $("member-list").addEventListener("click", (event) => {
    const button = event.target.closest("button.member");
    if (!button) return;
    const pm = ensurePm(button.dataset.nick);
    renderLists();
    activate(`pm:${keyOf(pm.nick)}`, { focus: true });
  });
  $("member-list").addEventListener("keydown", (event) => {
    if (["ArrowDown", "ArrowUp", "Home", "End"].includes(event.key))
      moveFocus($("member-list"), "button.member", event);
  });

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("join-input");
    const name = input.value.trim();
    if (!name) {
      input.focus();
      return;
    }
    if (submitLine(`/join ${roomName(name)}`, { typed: false })) input.value = "";
    closeDrawers();
    $("composer-input").focus();
  });

  $("refresh-rooms").addEventListener("click", () => {
    clearTimeout(roomsTimer);
    roomsTimer = null;
    lastRoomsAt = Math.min(lastRoomsAt, now() - ROOMS_MIN_GAP_MS + 2000); // at most every 2 s
    requestRooms(0);
  });

  $("leave-button").addEventListener("click", () => {
    const view = views.get(state.active);
    if (view.kind === "room") {
      submitLine(`/part ${viewLabel(view)}`, { typed: false });
    } else if (view.kind === "pm") {
      state.pms.delete(view.key);
      dropView(view.id);
      renderLists();
      saveState();
      $("composer-input").focus();
    }
  });

  $("nick-button").addEventListener("click", () => {
    if ($("nick-form").hidden) openNickForm();
    else closeNickForm({ focus: true });
  });
  $("nick-cancel").addEventListener("click", () => closeNickForm({ focus: true }));
  $("nick-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("nick-input").value.trim();
    const error = $("nick-error");
    if (!name || /\s/.test(name)) {
      error.textContent = "A nickname is one word: letters, digits, _ and -.";
      error.hidden = false;
      return;
    }
    error.hidden = true;
    if (same(name, state.nick) && name === state.nick) {
      closeNickForm({ focus: true });
      return;
    }
    if (!conn || !conn.welcomed) {
      // Asked for when the connection is back (and kept if the server agrees).
      state.wantedNick = name;
      renderMe();
      saveState();
      closeNickForm({ focus: true });
      return;
    }
    submitLine(`/nick ${name}`, { typed: false });
  });
  $("nick-form").addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeNickForm({ focus: true });
  });

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("login-name").value.trim();
    const password = $("login-password").value;
    if (!name || !password || /\s/.test(name) || /\s/.test(password)) {
      showLoginError("Give a name and a password (neither may contain spaces).");
      return;
    }
    logIn(name, password);
  });

  $("reconnect-now").addEventListener("click", reconnectNow);

  $("toggle-sidebar").addEventListener("click", () => toggleDrawer("sidebar"));
  $("toggle-members").addEventListener("click", () => toggleDrawer("members"));
  for (const button of document.querySelectorAll(".drawer-close"))
    button.addEventListener("click", () => closeDrawers({ focusToggle: true }));
  $("drawer-backdrop").addEventListener("click", () => closeDrawers({ focusToggle: true }));
  // A window widened past the phone layout shows both columns: no drawer, nothing inert.
  NARROW.addEventListener("change", () => {
    closeDrawers();
    renderHeader();
    if (!narrow()) requestRooms(0);
  });

  logBox.addEventListener("click", (event) => {
    const button = event.target.closest("button.history-more");
    const view = button && views.get(button.dataset.view);
    if (view) askOlder(view);
  });

  $("jump-latest").addEventListener("click", () => {
    views.get(state.active).pinned = true;
    toBottom();
    $("composer-input").focus();
  });
  logBox.addEventListener("scroll", notePosition);

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && openDrawer()) {
      closeDrawers({ focusToggle: true });
      return;
    }
    // Alt+Up / Alt+Down: the previous / next conversation, from anywhere.
    if (event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
      const ids = orderedViews();
      const index = ids.indexOf(state.active);
      if (!ids.length) return;
      const step = event.key === "ArrowUp" ? -1 : 1;
      const next = ids[(index + step + ids.length) % ids.length];
      event.preventDefault();
      activate(next, { focus: true });
    }
  });

  // Timers may have slept with the tab: check on the connection at once.
  const awake = () => {
    if (conn && conn.welcomed) ping(conn);
    else if (!conn && wantConnected && !holdForLogin) reconnectNow();
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      views.get(state.active).unread = 0;
      renderLists();
      updateTitle();
      awake();
      if (roomsOnScreen()) requestRooms(0);
    }
  });
  document.addEventListener("resume", awake); // a frozen page thawed (Chromium)
  window.addEventListener("online", () => {
    if (!conn && wantConnected && !holdForLogin) reconnectNow();
  });
  window.addEventListener("offline", () => {
    if (conn && conn.welcomed) ping(conn); // a dead link is noticed within the timeout
  });
  // Leaving the page: say goodbye, so the rooms see a quit rather than a lost connection.
  window.addEventListener("pagehide", () => {
    if (conn && conn.welcomed && !conn.closed) {
      send(conn, "/quit");
      conn.quitting = true;
    }
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && !conn) {
      wantConnected = true;
      reconnectNow();
    }
  });

  setInterval(() => {
    if (roomsOnScreen()) requestRooms(0);
  }, ROOMS_EVERY_MS);
}

function start() {
  makeView("server", "server", "server");
  loadState();
  for (const view of views.values()) view.list.hidden = view.id !== state.active;
  notice(views.get("server"), "Welcome to groupchat. Type /help for the commands.");
  wire();
  renderMe();
  activate(state.active);
  connect();
  $("composer-input").focus();
}

start();
