// Notes: a small masq web app. Each note is one Automerge document
//   { "title": string, "text": text object, "updated": ms timestamp }
// stored in the app's namespace ("notes") of the local masq store, which
// syncs it end-to-end encrypted to the user's other devices.
//
// The text is edited with one `splice` per save, computed against the text
// last read from the store, so edits made concurrently on two devices merge
// instead of overwriting each other. The store counts text positions in
// Unicode code points (not JavaScript's UTF-16 units): see `splice` below.

const params = new URLSearchParams(location.search);
const STORE = (params.get("store") || "http://127.0.0.1:7070").replace(/\/+$/, "");
/**
 * The client package (web/client/) for when no store runs on this device:
 * the page then keeps the notes itself, in this browser (peer mode). The
 * default works when the repository's root is served; `?client=` overrides.
 */
const PACKAGE_CLIENT = params.get("client") || "../../web/client/masq-client.js";
const APP = "notes";
const SAVE_DELAY_MS = 300;

const $ = (sel) => document.querySelector(sel);
const ui = {
  state: $("#state"),
  error: $("#error"),
  list: $("#notes"),
  newNote: $("#new-note"),
  title: $("#title"),
  text: $("#text"),
  del: $("#delete-note"),
  saveState: $("#save-state"),
  namespace: $("#namespace"),
  devices: $("#devices"),
  deviceList: $("#device-list"),
  inviteForm: $("#pair-invite-form"),
  relay: $("#pair-relay"),
  offer: $("#pair-offer"),
  qr: $("#pair-qr"),
  uri: $("#pair-uri"),
  joinForm: $("#pair-join-form"),
  joinUri: $("#pair-join-uri"),
  pairStatus: $("#pair-status"),
  pairCheck: $("#pair-check"),
  pairCode: $("#pair-code"),
  pairPeer: $("#pair-peer"),
  pairYes: $("#pair-yes"),
  pairNo: $("#pair-no"),
};
/** The relay to pair through: `?relay=`, else the last one used here. */
const RELAY_KEY = "notes-relay";
/** How often the device list refreshes (online state) while it is open. */
const DEVICES_REFRESH_MS = 3000;

let masq = null;
/** Whether the store has let this app in at least once. */
let everReady = false;
/** id -> { title, text, updated } as last read from (or written to) the store. */
const notes = new Map();
/** The open note's id, or null. */
let current = null;
/** The open note's title and text as the store last had them. */
let base = { title: "", text: "" };
let saveTimer = null;

// ---------------------------------------------------------------------------
// Text diffs in Unicode code points (the unit of the store's text indexes).

const cps = (s) => Array.from(s);

/** One splice turning `a` into `b`: common prefix and suffix kept. */
function splice(a, b) {
  const A = cps(a);
  const B = cps(b);
  const max = Math.min(A.length, B.length);
  let p = 0;
  while (p < max && A[p] === B[p]) p++;
  let s = 0;
  while (s < max - p && A[A.length - 1 - s] === B[B.length - 1 - s]) s++;
  return { index: p, delete: A.length - p - s, insert: B.slice(p, B.length - s).join("") };
}

function applySplice(s, sp) {
  const A = cps(s);
  A.splice(sp.index, sp.delete, ...cps(sp.insert));
  return A.join("");
}

/** Moves a position across a splice (inside a deleted range: after the insert). */
function mapPos(p, sp) {
  const ins = cps(sp.insert).length;
  if (p <= sp.index) return p;
  if (p >= sp.index + sp.delete) return p - sp.delete + ins;
  return sp.index + ins;
}

/**
 * `mine` and `theirs` were both made against the same text; returns `mine`
 * rewritten to apply after `theirs`, keeping what `theirs` inserted.
 */
function rebase(mine, theirs) {
  const j = theirs.index;
  const jEnd = theirs.index + theirs.delete;
  const shift = cps(theirs.insert).length - theirs.delete;
  const start = mine.index < j ? mine.index : mine.index >= jEnd ? mine.index + shift : j + cps(theirs.insert).length;
  const endIn = mine.index + mine.delete;
  const end = endIn <= j ? endIn : endIn >= jEnd ? endIn + shift : j;
  return { index: start, delete: Math.max(0, end - start), insert: mine.insert };
}

/** Replaces a field's value, keeping the caret and scroll where they were. */
function replaceValue(field, value) {
  const old = field.value;
  if (old === value) return;
  const focused = document.activeElement === field;
  let selStart = 0;
  let selEnd = 0;
  if (focused) {
    const sp = splice(old, value);
    const toCp = (i) => cps(old.slice(0, i)).length;
    const VB = cps(value);
    const toU16 = (n) => VB.slice(0, n).join("").length;
    selStart = toU16(mapPos(toCp(field.selectionStart), sp));
    selEnd = toU16(mapPos(toCp(field.selectionEnd), sp));
  }
  const scroll = field.scrollTop;
  field.value = value;
  if (focused) field.setSelectionRange(selStart, selEnd);
  field.scrollTop = scroll;
}

// ---------------------------------------------------------------------------
// One queue for everything that reads or writes the store, so a save and a
// re-read of the same note never interleave.

let chain = Promise.resolve();
function enqueue(job) {
  chain = chain.then(job).catch(showError);
  return chain;
}

// ---------------------------------------------------------------------------
// State banner and errors.

function showState(state) {
  const b = ui.state;
  b.dataset.state = state;
  b.textContent = "";
  switch (state) {
    case "pending":
      b.append(
        "Waiting for approval: open the store manager (",
        code("masq manager"),
        ") and approve ",
        code(location.origin),
      );
      break;
    case "ready":
      b.append("Connected");
      break;
    case "peer":
      b.append("No store on this device: your notes are kept in this browser");
      break;
    case "denied":
      b.append("This store refused the app. Approve ", code(location.origin), " again in the store manager, then reload.");
      break;
    case "connecting":
      b.append(masq ? "Connection lost: reconnecting to the store…" : "Connecting to the store…");
      break;
    case "closed":
      b.append("Disconnected from the store. Reload to reconnect.");
      break;
    default:
      b.append(state);
  }
  // While reconnecting, requests wait in the client: editing goes on.
  const usable = everReady && (state === "ready" || state === "peer" || state === "connecting");
  ui.newNote.disabled = !usable;
  setEditorEnabled(current !== null && usable);
  if (masq && masq.app && masq.app !== APP) ui.namespace.textContent = ` · namespace ${masq.app}`;
}

function code(text) {
  const c = document.createElement("code");
  c.textContent = text;
  return c;
}

function showUnreachable(detail) {
  const b = ui.state;
  b.dataset.state = "unreachable";
  b.textContent = "";
  b.append("Cannot reach the masq store at ", code(STORE), ". Start it with ", code("masq store"), ", then reload this page.");
  if (detail) showError(detail);
}

function showError(e) {
  if (!e) return;
  console.error(e);
  const text = e.code ? `${e.code}: ${e.message}` : String(e.message || e);
  ui.error.querySelector(".error-text").textContent = text;
  ui.error.hidden = false;
}

ui.error.querySelector(".dismiss").addEventListener("click", () => {
  ui.error.hidden = true;
});

// ---------------------------------------------------------------------------
// Notes list.

function normalize(doc) {
  doc = doc && typeof doc === "object" ? doc : {};
  const str = (v) => (typeof v === "string" ? v : v === undefined || v === null ? "" : String(v));
  return { title: str(doc.title), text: str(doc.text), updated: Number(doc.updated) || 0 };
}

function when(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const now = new Date();
  if (now - d < 60_000) return "just now";
  if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toLocaleDateString();
}

function preview(text) {
  const line = text.split("\n").find((l) => l.trim()) || "";
  return line.length > 90 ? line.slice(0, 90) + "…" : line;
}

function renderList() {
  const items = [...notes.entries()].map(([id, n]) => {
    // The open note shows what is in the editor, saved or not.
    if (id === current) return { id, title: ui.title.value, text: ui.text.value, updated: n.updated };
    return { id, ...n };
  });
  items.sort((a, b) => b.updated - a.updated || a.id.localeCompare(b.id));

  const old = new Map();
  for (const li of Array.from(ui.list.children)) {
    if (li.dataset.doc) old.set(li.dataset.doc, li);
    else li.remove();
  }
  let prev = null;
  for (const it of items) {
    let li = old.get(it.id);
    if (li) old.delete(it.id);
    else li = makeItem(it.id);
    setText(li.querySelector(".title"), it.title.trim() || "Untitled");
    setText(li.querySelector(".preview"), preview(it.text));
    setText(li.querySelector(".time"), when(it.updated));
    const selected = it.id === current;
    li.classList.toggle("selected", selected);
    if (selected) li.setAttribute("aria-current", "true");
    else li.removeAttribute("aria-current");
    const want = prev ? prev.nextSibling : ui.list.firstChild;
    if (li !== want) ui.list.insertBefore(li, want);
    prev = li;
  }
  for (const li of old.values()) li.remove();
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = masq && masq.state === "ready" ? "No notes yet: create one." : "Your notes appear here once the store lets this app in.";
    ui.list.append(li);
  }
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function makeItem(id) {
  const li = document.createElement("li");
  li.dataset.doc = id;
  li.tabIndex = 0;
  for (const cls of ["title", "preview", "time"]) {
    const span = document.createElement("span");
    span.className = cls;
    li.append(span);
  }
  li.addEventListener("click", () => selectNote(id));
  li.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      selectNote(id);
    }
  });
  return li;
}

// ---------------------------------------------------------------------------
// Editor.

function setEditorEnabled(on) {
  ui.title.disabled = !on;
  ui.text.disabled = !on;
  ui.del.disabled = !on;
}

function dirty() {
  return current !== null && (ui.title.value !== base.title || ui.text.value !== base.text);
}

function showSaveState(text) {
  ui.saveState.textContent = text;
}

/** Opens a note in the editor (inside the queue). */
function openNote(id) {
  const n = id === null ? undefined : notes.get(id);
  if (!n) {
    current = null;
    base = { title: "", text: "" };
    ui.title.value = "";
    ui.text.value = "";
    setEditorEnabled(false);
    showSaveState("");
    renderList();
    return;
  }
  current = id;
  base = { title: n.title, text: n.text };
  ui.title.value = n.title;
  ui.text.value = n.text;
  ui.text.scrollTop = 0;
  setEditorEnabled(true);
  showSaveState("");
  renderList();
}

/** Brings what the store has for the open note into the editor. */
function mergeIntoEditor(n) {
  if (n.title !== base.title) {
    // No unsaved title edit: show theirs. Otherwise keep ours (the next save puts it).
    if (ui.title.value === base.title) replaceValue(ui.title, n.title);
    base.title = n.title;
  }
  if (n.text !== base.text) {
    const local = ui.text.value;
    if (local === base.text || local === n.text) {
      replaceValue(ui.text, n.text);
    } else {
      // An unsaved local edit and a change from elsewhere: put our edit on
      // top of the new text, so the next save (a splice against the new
      // text) keeps both.
      const mine = splice(base.text, local);
      const theirs = splice(base.text, n.text);
      replaceValue(ui.text, applySplice(n.text, rebase(mine, theirs)));
    }
    base.text = n.text;
  }
  if (dirty()) scheduleSave();
}

function scheduleSave() {
  showSaveState("Unsaved changes");
  clearTimeout(saveTimer);
  saveTimer = setTimeout(save, SAVE_DELAY_MS);
}

function save() {
  clearTimeout(saveTimer);
  saveTimer = null;
  return enqueue(saveNow);
}

async function saveNow() {
  const id = current;
  if (id === null || !masq || !dirty()) return;
  const title = ui.title.value;
  const text = ui.text.value;
  const ops = [];
  if (title !== base.title) ops.push({ op: "put", path: "/title", value: title });
  if (text !== base.text) ops.push({ op: "splice", path: "/text", ...splice(base.text, text) });
  const updated = Date.now();
  ops.push({ op: "put", path: "/updated", value: updated });
  showSaveState("Saving…");
  try {
    await masq.docs.change(id, ops);
  } catch (e) {
    if (e.code === "doc_deleted" || e.code === "unknown_doc") {
      forget(id, "This note was deleted on another device; your last edit could not be saved.");
      return;
    }
    showSaveState("Not saved");
    throw e;
  }
  if (current === id) base = { title, text };
  notes.set(id, { title, text, updated });
  showSaveState(dirty() ? "Unsaved changes" : "Saved");
  renderList();
}

/** Selects a note: saves the open one first. */
function selectNote(id) {
  if (id === current) return;
  save();
  enqueue(() => openNote(id));
}

function newNote() {
  if (!masq) return;
  save();
  enqueue(async () => {
    const updated = Date.now();
    const id = await masq.docs.create([
      { op: "put", path: "/title", value: "Untitled" },
      { op: "put_text", path: "/text", value: "" },
      { op: "put", path: "/updated", value: updated },
    ]);
    notes.set(id, { title: "Untitled", text: "", updated });
    openNote(id);
    ui.title.focus();
    ui.title.select();
  });
}

function deleteNote() {
  const id = current;
  if (id === null) return;
  clearTimeout(saveTimer);
  enqueue(async () => {
    try {
      await masq.docs.delete(id);
    } catch (e) {
      if (e.code !== "doc_deleted" && e.code !== "unknown_doc") throw e;
    }
    forget(id);
  });
}

/** Drops a note from the list; if it was open, opens the most recent one. */
function forget(id, message) {
  notes.delete(id);
  if (current === id) {
    const next = [...notes.entries()].sort((a, b) => b[1].updated - a[1].updated)[0];
    openNote(next ? next[0] : null);
    if (message) showSaveState(message);
  } else {
    renderList();
  }
}

// ---------------------------------------------------------------------------
// Reading from the store.

const GONE = new Set(["doc_deleted", "unknown_doc"]);

async function readNote(id) {
  try {
    return normalize(await masq.docs.read(id));
  } catch (e) {
    if (GONE.has(e.code)) return null;
    throw e;
  }
}

async function loadNote(id) {
  const n = await readNote(id);
  if (!n) {
    if (notes.has(id)) forget(id, current === id ? "This note was deleted." : undefined);
    return;
  }
  notes.set(id, n);
  if (id === current) mergeIntoEditor(n);
}

async function reloadAll() {
  const ids = await masq.docs.list();
  const read = await Promise.all(ids.map(async (id) => [id, await readNote(id)]));
  notes.clear();
  for (const [id, n] of read) if (n) notes.set(id, n);
  if (current !== null && notes.has(current)) mergeIntoEditor(notes.get(current));
  else {
    const first = [...notes.entries()].sort((a, b) => b[1].updated - a[1].updated)[0];
    openNote(first ? first[0] : null);
  }
  renderList();
}

// Events of many changes to the same notes collapse into one re-read each.
const stale = new Set();
let staleQueued = false;

function refreshLater(id) {
  stale.add(id);
  if (staleQueued) return;
  staleQueued = true;
  enqueue(async () => {
    staleQueued = false;
    const ids = [...stale];
    stale.clear();
    for (const id of ids) await loadNote(id);
    renderList();
  });
}

function onEvent(ev) {
  if (ev.type === "doc") refreshLater(ev.doc);
  else if (ev.type === "doc_deleted") {
    const remote = ev.origin && ev.origin.kind === "remote";
    enqueue(() => {
      if (notes.has(ev.doc)) forget(ev.doc, remote ? "This note was deleted on another device." : undefined);
    });
  } else if (ev.type === "lagged") enqueue(reloadAll);
}

// ---------------------------------------------------------------------------
// Devices (peer mode): this browser is a device; pair it with the others.

async function renderDevices() {
  if (!masq || masq.state !== "peer") return;
  const { devices } = await masq.pair.devices();
  ui.deviceList.textContent = "";
  if (!devices.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "Not paired yet: your notes stay in this browser until you pair it with your other devices.";
    ui.deviceList.append(li);
  }
  for (const d of devices) {
    const li = document.createElement("li");
    li.dataset.device = d.device;
    const dot = document.createElement("span");
    dot.className = d.online ? "dot online" : "dot";
    dot.title = d.online ? "online" : "offline";
    li.append(dot, ` ${d.name} `);
    const sc = document.createElement("span");
    sc.className = "muted";
    sc.textContent = `key code ${d.safety_code}`;
    li.append(sc);
    ui.deviceList.append(li);
  }
}

function pairStatus(text, ok) {
  ui.pairStatus.textContent = text;
  ui.pairStatus.dataset.ok = ok ? "yes" : "no";
}

function pairedText(p) {
  return `Paired with ${p.name}. Both devices confirmed code ${p.safety_code}.`;
}

/** Shows a pairing's code; resolves to the user's answer (nothing is stored before both devices say yes). */
function askCode(check) {
  ui.pairCode.textContent = check.code;
  ui.pairPeer.textContent = check.name;
  ui.pairCheck.hidden = false;
  pairStatus("Compare the code with your other device.", true);
  return new Promise((resolve) => {
    const answer = (yes) => {
      ui.pairYes.onclick = ui.pairNo.onclick = null;
      ui.pairCheck.hidden = true;
      pairStatus(yes ? "Confirmed here: waiting for the other device…" : "Declined: nothing was stored.", yes);
      resolve(yes);
    };
    ui.pairYes.onclick = () => answer(true);
    ui.pairNo.onclick = () => answer(false);
  });
}

async function invite(e) {
  e.preventDefault();
  const relay = ui.relay.value.trim();
  localStorage.setItem(RELAY_KEY, relay);
  try {
    const inv = await masq.pair.invite(relay, { confirm: askCode });
    ui.qr.innerHTML = inv.qr_svg; // an SVG made by the core from the invite
    ui.uri.value = inv.invite;
    ui.offer.hidden = false;
    pairStatus("Open this invite on your other device (valid 10 minutes, once).", true);
    inv.code.then(() => (ui.offer.hidden = true));
    const p = await inv.paired;
    ui.offer.hidden = true;
    pairStatus(pairedText(p), true);
  } catch (err) {
    ui.offer.hidden = true;
    ui.pairCheck.hidden = true;
    pairStatus(`Pairing failed: ${err.message}`, false);
  }
  renderDevices().catch(showError);
}

async function join(e) {
  e.preventDefault();
  pairStatus("Joining…", true);
  try {
    const p = await masq.pair.join(ui.joinUri.value.trim(), { confirm: askCode });
    ui.joinUri.value = "";
    pairStatus(pairedText(p), true);
  } catch (err) {
    ui.pairCheck.hidden = true;
    pairStatus(`Pairing failed: ${err.message}`, false);
  }
  renderDevices().catch(showError);
}

function wireDevices() {
  ui.devices.hidden = false;
  ui.relay.value = params.get("relay") || localStorage.getItem(RELAY_KEY) || "";
  ui.inviteForm.addEventListener("submit", (e) => invite(e).catch(showError));
  ui.joinForm.addEventListener("submit", (e) => join(e).catch(showError));
  ui.devices.addEventListener("toggle", () => renderDevices().catch(showError));
  setInterval(() => {
    if (ui.devices.open) renderDevices().catch(() => {});
  }, DEVICES_REFRESH_MS);
  renderDevices().catch(showError);
}

// ---------------------------------------------------------------------------
// Start.

function wire() {
  ui.newNote.addEventListener("click", newNote);
  ui.del.addEventListener("click", deleteNote);
  for (const field of [ui.title, ui.text]) {
    field.addEventListener("input", () => {
      scheduleSave();
      renderList();
    });
    field.addEventListener("blur", () => {
      if (dirty()) save();
    });
  }
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") {
      e.preventDefault();
      save();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden" && dirty()) save();
  });
  window.addEventListener("pagehide", () => {
    if (dirty()) save(); // best effort: the request may still go out
  });
}

async function main() {
  wire();
  renderList();
  showState("connecting");
  let client;
  let mode = "store";
  try {
    client = await import(STORE + "/masq-client.js");
  } catch (e) {
    // No store serves its client: this page becomes the device (peer mode),
    // if the client package is here.
    try {
      client = await import(new URL(PACKAGE_CLIENT, location.href).href);
      mode = "peer";
    } catch (_) {
      showUnreachable(null);
      console.error(e);
      return;
    }
  }
  try {
    masq = await client.connect({ app: APP, url: STORE, mode });
  } catch (e) {
    if (e.code === "denied") showState("denied");
    else showUnreachable(e);
    return;
  }
  masq.onState((s) => {
    if (s === "ready" || s === "peer") everReady = true;
    showState(s);
  });
  showState(masq.state);
  try {
    await masq.ready();
  } catch (e) {
    showState(masq.state);
    return;
  }
  everReady = true;
  showState(masq.state);
  await masq.docs.subscribe(null, onEvent);
  await enqueue(reloadAll);
  if (masq.state === "peer") wireDevices();
}

main().catch(showError);
