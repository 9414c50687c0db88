// The store manager page (served by `masq store` at `/`, opened through the
// link `masq manager` prints: http://127.0.0.1:PORT/#code=LOGIN_CODE).
//
// The link's code works once: on load the page removes it from the address
// bar (so it is not kept in history), connects with it, trades it for a
// session credential (`admin.session`) kept in this tab's sessionStorage, and
// uses that from then on, also after a reload (docs/protocol.md, "Manager
// login").
//
// Everything shown comes from admin requests over one WebSocket (see
// docs/protocol.md, "App protocol"); the page polls every second and right
// after each action, and updates the DOM in place (keyed by data attributes)
// so fields the user is typing in are never rebuilt.

import { connect, MasqError } from "/masq-client.js";

const POLL_MS = 1000;

const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------------------
// Small DOM helpers (all data goes through textContent / attributes).

/** Creates an element: h("td", {class: "x", dataset: {...}}, child, "text"). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Sets the text of an element only if it changed (keeps selections alive). */
function setText(el, text) {
  text = text === null || text === undefined ? "" : String(text);
  if (el && el.textContent !== text) el.textContent = text;
}

function setAttr(el, name, value) {
  value = String(value);
  if (el.getAttribute(name) !== value) el.setAttribute(name, value);
}

/**
 * Makes `container`'s children match `items`, in order. Children are keyed by
 * the attribute `attr` (`keyOf(item)`); existing ones are updated in place,
 * new ones made by `create(item)`, stale ones removed. `makeEmpty()` (if given)
 * builds a placeholder (class `empty`) shown when there is no item.
 */
function reconcile(container, attr, items, keyOf, create, update, makeEmpty) {
  const old = new Map();
  let placeholder = null;
  for (const el of Array.from(container.children)) {
    const k = el.getAttribute(attr);
    if (k !== null && !old.has(k)) old.set(k, el);
    else if (el.classList.contains("empty") && !placeholder) placeholder = el;
    else el.remove();
  }
  if (items.length && placeholder) {
    placeholder.remove();
    placeholder = null;
  }
  let prev = null;
  const seen = new Set();
  for (const item of items) {
    const key = String(keyOf(item));
    if (seen.has(key)) continue;
    seen.add(key);
    let el = old.get(key);
    if (el) old.delete(key);
    else {
      el = create(item);
      el.setAttribute(attr, key);
    }
    update(el, item);
    const want = prev ? prev.nextSibling : container.firstChild;
    if (el !== want) container.insertBefore(el, want);
    prev = el;
  }
  for (const el of old.values()) el.remove();
  if (!items.length && !placeholder && makeEmpty) {
    const p = makeEmpty();
    p.classList.add("empty");
    container.append(p);
  }
}

/** A table row placeholder spanning `cols` columns. */
const emptyRow = (text, cols) => () => h("tr", {}, h("td", { colspan: cols, class: "muted", text }));
/** A list item placeholder. */
const emptyItem = (text) => () => h("li", { class: "muted", text });

/** "12 s ago", "3 min ago", … from seconds since the epoch (0: never). */
function ago(secs) {
  if (!secs) return "never";
  const d = Math.max(0, Math.round(Date.now() / 1000 - secs));
  if (d < 5) return "just now";
  if (d < 60) return `${d} s ago`;
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
  return new Date(secs * 1000).toLocaleString();
}

function absTime(secs) {
  return secs ? new Date(secs * 1000).toLocaleString() : "";
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

// ---------------------------------------------------------------------------
// Errors: never swallowed. Errors of actions stay until dismissed or until
// the next action; errors of the poll stay until a poll succeeds.

const errors = { action: null, poll: null, conn: null };

function describe(e) {
  if (e instanceof MasqError) {
    return `${e.code}: ${e.message}`;
  }
  return e && e.message ? String(e.message) : String(e);
}

function renderError() {
  const box = $("#error");
  const lines = [errors.action, errors.poll, errors.conn].filter(Boolean);
  setText($(".error-text", box), lines.join(" — "));
  box.hidden = lines.length === 0;
}

function showError(kind, e) {
  if (e) console.error(e);
  errors[kind] = e ? describe(e) : null;
  renderError();
}

$("#error .dismiss").addEventListener("click", () => {
  errors.action = errors.poll = null;
  renderError();
});

// ---------------------------------------------------------------------------
// Start.

let masq = null;

const SESSION_KEY = "masq-admin-session";

/** What the link carried (`#code=` or an old-style `#token=`), removed from the
 * address bar at once; else the session this tab already has. */
function takeCredential() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const code = (params.get("code") || "").trim();
  const token = (params.get("token") || "").trim();
  if (params.has("code") || params.has("token")) {
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (code) return { code };
  if (token) return { token };
  const session = sessionStorage.getItem(SESSION_KEY);
  return session ? { token: session } : null;
}

/** Connects as the admin; a link's one-time code is traded for a session first. */
async function connectAdmin(cred) {
  if (cred.code) {
    const once = await connect({ token: cred.code });
    try {
      const { session } = await once.request("admin.session");
      sessionStorage.setItem(SESSION_KEY, session);
      cred = { token: session };
    } finally {
      once.close();
    }
  }
  try {
    return await connect({ token: cred.token });
  } catch (e) {
    sessionStorage.removeItem(SESSION_KEY); // a store restart ends sessions
    throw e;
  }
}

async function main() {
  const cred = takeCredential();
  if (!cred) {
    const box = $("#auth-missing");
    box.textContent = "";
    box.append(
      "Open the link printed by ",
      h("code", { text: "masq manager" }),
      "; it lets this page in once.",
    );
    box.hidden = false;
    setConnState("closed");
    return;
  }
  $("#content").hidden = false;
  wireActions();
  setConnState("connecting");
  try {
    masq = await connectAdmin(cred);
  } catch (e) {
    console.error(e);
    setConnState("closed");
    errors.conn =
      `Could not connect to the store (${describe(e)}). Is \`masq store\` running? ` +
      "A manager link works once, and each start of the store ends earlier sessions: open the link `masq manager` prints now.";
    renderError();
    return;
  }
  masq.onState(setConnState);
  setConnState(masq.state); // refreshes when ready
  setInterval(() => {
    if (masq && masq.state === "ready") refresh();
  }, POLL_MS);
}

function setConnState(state) {
  const el = $("#conn-state");
  setText(el, state);
  setAttr(el, "data-state", state);
  const hint = $("#conn-hint");
  if (state === "ready") {
    hint.hidden = true;
    if (errors.conn) {
      errors.conn = null;
      renderError();
    }
    refresh();
  } else if (masq && state === "connecting") {
    hint.textContent =
      "Lost the connection to the store; reconnecting… If the store was restarted, this page's session ended: open the new link `masq manager` prints.";
    hint.hidden = false;
  } else if (masq && (state === "closed" || state === "denied")) {
    hint.textContent = "The connection to the store is closed. Reload this page, or open the link `masq manager` prints.";
    hint.hidden = false;
  } else {
    hint.hidden = true;
  }
}

// ---------------------------------------------------------------------------
// Polling.

let polling = false;
let pollAgain = false;

/** Re-reads everything and re-renders; calls made meanwhile coalesce. */
async function refresh() {
  if (!masq || masq.state !== "ready") return;
  if (polling) {
    pollAgain = true;
    return;
  }
  polling = true;
  try {
    do {
      pollAgain = false;
      await pollOnce();
    } while (pollAgain && masq.state === "ready");
  } finally {
    polling = false;
  }
}

async function pollOnce() {
  let firstError = null;
  const note = (e) => {
    if (!firstError) firstError = e;
  };
  const [status, devices, apps, prefs] = await Promise.all([
    masq.request("status").catch((e) => (note(e), null)),
    masq.request("devices.list").catch((e) => (note(e), null)),
    masq.request("apps.list").catch((e) => (note(e), null)),
    masq.request("sync.show").catch((e) => (note(e), null)),
  ]);
  if (status) renderStatus(status);
  if (devices) renderDevices(devices, status);
  if (prefs) renderSyncPrefs(prefs);
  let names = [];
  if (apps) {
    renderPending(apps);
    renderApps(apps);
    names = appNames(apps);
  }
  if (apps) {
    const data = await Promise.all(
      names.map((app) => masq.request("apps.data", { name: app }).catch((e) => (note(e), null))),
    );
    renderAppData(apps, names, data);
  }
  showError("poll", firstError);
}

// ---------------------------------------------------------------------------
// Rendering.

function renderStatus(status) {
  setText($("#relay"), status.relay || "none configured");
  setText($("#engine"), status.daemon ? "running" : "not running (no relay or no paired device)");
}

function renderDevices(list, status) {
  const me = list.me || {};
  const box = $("#me");
  setText($(".name", box), me.name || "(unnamed)");
  setText($(".fingerprint", box), me.fingerprint || "");
  setText($(".device", box), me.device || "");
  const nameInput = $("#device-name");
  if (document.activeElement !== nameInput) setAttr(nameInput, "placeholder", me.name || "New name");

  const peers = new Map(((status && status.peers) || []).map((p) => [p.device, p]));
  const devices = [...(list.devices || [])].sort(
    (a, b) => String(a.name).localeCompare(String(b.name)) || String(a.device).localeCompare(String(b.device)),
  );
  reconcile(
    $("#devices"),
    "data-device",
    devices,
    (d) => d.device,
    (d) => {
      const remove = h("button", { type: "button", class: "remove danger small" }, "Remove");
      remove.addEventListener("click", () => removeDevice(remove, remove.closest("tr").dataset.device));
      return h(
        "tr",
        {},
        h("td", { class: "name" }),
        h("td", { class: "fingerprint mono" }),
        h("td", {}, h("span", { class: "online pill" })),
        h("td", { class: "safety-code mono" }),
        h("td", { class: "last-seen" }),
        h("td", { class: "pending-docs" }),
        h("td", { class: "actions" }, remove),
      );
    },
    (row, d) => {
      setText($(".name", row), d.name || "(unnamed)");
      setText($(".fingerprint", row), d.fingerprint);
      const online = $(".online", row);
      setText(online, d.online ? "online" : "offline");
      setAttr(online, "data-state", d.online ? "online" : "offline");
      setText($(".safety-code", row), d.safety_code);
      const seen = $(".last-seen", row);
      setText(seen, d.online ? "now" : ago(d.last_seen));
      setAttr(seen, "title", absTime(d.last_seen));
      const p = peers.get(d.device);
      const n = p ? p.unacknowledged_docs || 0 : null;
      const off = p && p.apps_off && p.apps_off.length ? ` (${plural(p.apps_off.length, "app", "apps")} off)` : "";
      setText(
        $(".pending-docs", row),
        status && status.sync_paused ? "sync paused" : n === null ? "" : (n === 0 ? "in sync" : plural(n, "document", "documents")) + off,
      );
    },
    emptyRow("No paired device yet: pair one above.", 7),
  );
}

/** What a device said it takes from this store, in a few words. */
function theirWord(remote, app) {
  if (!remote) return { state: "unknown", text: "not said yet" };
  if (remote.paused) return { state: "off", text: "they paused" };
  if ((remote.off || []).includes(app)) return { state: "off", text: "they: off" };
  if (remote.only && !remote.only.includes(app)) return { state: "off", text: "they hold other apps" };
  return { state: "on", text: "they: on" };
}

let lastSyncPrefs = "";

/** The pause switch and the apps x devices grid of `sync.show`. */
function renderSyncPrefs(prefs) {
  // Always from the store's answer: a switch whose change failed shows
  // what holds, not the click.
  $("#sync-paused").checked = !!prefs.paused;
  const relayState = prefs.relay_connected === true ? "connected" : prefs.relay_connected === false ? "not connected" : "no sync engine";
  setText($("#sync-relay"), prefs.relay ? `${prefs.relay} (${relayState})` : "none configured");
  const grid = $("#sync-grid");
  setAttr(grid, "data-paused", prefs.paused ? "1" : "");
  // Rebuilt only when something changed (a switch being clicked keeps focus).
  const key = JSON.stringify(prefs);
  if (key === lastSyncPrefs) return;
  lastSyncPrefs = key;
  const devices = prefs.devices || [];
  const apps = prefs.apps || [];
  const head = $("thead", grid);
  const body = $("tbody", grid);
  head.replaceChildren(
    h("tr", {}, h("th", { text: "App" }), ...devices.map((d) => h("th", { text: d.name || d.fingerprint, title: d.fingerprint }))),
  );
  if (!devices.length || !apps.length) {
    body.replaceChildren(
      h("tr", {}, h("td", { class: "muted", text: !devices.length ? "No paired device yet." : "No app yet." })),
    );
    return;
  }
  body.replaceChildren(
    ...apps.map((app) =>
      h(
        "tr",
        { "data-app": app },
        h("td", { class: "mono", text: app }),
        ...devices.map((d) => {
          const on = !d.apps || d.apps[app] !== false;
          const box = h("input", {
            type: "checkbox",
            "data-app": app,
            "data-device": d.device,
            "aria-label": `Sync ${app} with ${d.name || d.fingerprint}`,
          });
          box.checked = on;
          box.addEventListener("change", () => {
            lastSyncPrefs = ""; // redrawn from the answer, even if it fails
            act(() => masq.request("sync.set", { app, device: d.device, on: box.checked }));
          });
          const word = theirWord(d.remote, app);
          return h("td", { class: "cell" }, box, h("span", { class: "theirs muted", "data-state": word.state, text: word.text }));
        }),
      ),
    ),
  );
}

/** Two clicks to remove a device (no blocking confirm dialog). */
function removeDevice(button, device) {
  if (button.dataset.armed !== "1") {
    button.dataset.armed = "1";
    button.textContent = "Click again to remove";
    setTimeout(() => {
      button.dataset.armed = "";
      button.textContent = "Remove";
    }, 4000);
    return;
  }
  act(() => masq.request("devices.remove", { device }));
}

function renderPending(apps) {
  const pending = (apps.origins || []).filter((o) => o.state === "pending");
  reconcile(
    $("#pending"),
    "data-origin",
    pending,
    (o) => o.origin,
    () => {
      const li = h(
        "li",
        { class: "item" },
        h(
          "div",
          { class: "what" },
          h("span", { class: "origin mono" }),
          h("span", { class: "meta" }, "asks for app ", h("strong", { class: "app" }), h("span", { class: "since" })),
        ),
        h(
          "div",
          { class: "actions" },
          h("button", { type: "button", class: "approve primary" }, "Approve"),
          h("button", { type: "button", class: "deny danger" }, "Deny"),
        ),
      );
      $(".approve", li).addEventListener("click", () =>
        act(() => masq.request("apps.approve", { origin: li.dataset.origin })),
      );
      $(".deny", li).addEventListener("click", () => act(() => masq.request("apps.deny", { origin: li.dataset.origin })));
      return li;
    },
    (li, o) => {
      setText($(".origin", li), o.origin);
      setText($(".app", li), o.app);
      setText($(".since", li), o.since ? ` · ${ago(o.since)}` : "");
    },
    emptyItem("No app is waiting for approval."),
  );
}

function renderApps(apps) {
  const origins = (apps.origins || [])
    .filter((o) => o.state !== "pending")
    .sort((a, b) => (a.state === b.state ? a.origin.localeCompare(b.origin) : a.state === "approved" ? -1 : 1));
  const items = [
    ...origins.map((o) => ({ kind: "origin", key: `o:${o.origin}`, o })),
    ...(apps.native || []).map((n) => ({ kind: "native", key: `n:${n.name}`, n })),
  ];
  // Keyed by an internal attribute so origins and native names never clash;
  // the public data-origin / data-native attributes are set on creation.
  reconcile(
    $("#apps"),
    "data-key",
    items,
    (it) => it.key,
    (it) => {
      const li = h(
        "li",
        { class: "item" },
        h(
          "div",
          { class: "what" },
          h("span", { class: "who mono" }),
          h("span", { class: "meta" }, h("span", { class: "state pill" }), " ", h("span", { class: "detail" })),
        ),
        h("div", { class: "actions" }),
      );
      if (it.kind === "origin") li.dataset.origin = it.o.origin;
      else li.dataset.native = it.n.name;
      return li;
    },
    (li, it) => {
      const actions = $(".actions", li);
      let state, who, detail, button;
      if (it.kind === "origin") {
        state = it.o.state;
        who = it.o.origin;
        detail = `app ${it.o.app}` + (it.o.since ? ` · since ${absTime(it.o.since)}` : "");
        button = state === "approved" ? "revoke" : "approve";
      } else {
        state = "native";
        who = it.n.name;
        detail = "native app (token)" + (it.n.since ? ` · since ${absTime(it.n.since)}` : "");
        button = "revoke";
      }
      setText($(".who", li), who);
      const pill = $(".state", li);
      setText(pill, state);
      setAttr(pill, "data-state", state);
      setText($(".detail", li), detail);
      if (actions.dataset.kind !== button) {
        actions.dataset.kind = button;
        actions.textContent = "";
        if (button === "revoke") {
          const b = h("button", { type: "button", class: "revoke danger" }, "Revoke");
          b.addEventListener("click", () =>
            act(() => masq.request("apps.revoke", { who: li.dataset.origin || li.dataset.native })),
          );
          actions.append(b);
        } else {
          const b = h("button", { type: "button", class: "approve" }, "Approve again");
          b.addEventListener("click", () => act(() => masq.request("apps.approve", { origin: li.dataset.origin })));
          actions.append(b);
        }
      }
    },
    emptyItem("No app has access yet."),
  );
}

/** Every app name with data, an approved origin or a native token. */
function appNames(apps) {
  const names = new Set(apps.namespaces || []);
  for (const o of apps.origins || []) if (o.state === "approved") names.add(o.app);
  for (const n of apps.native || []) names.add(n.name);
  return [...names].sort((a, b) => a.localeCompare(b));
}

function renderAppData(apps, names, data) {
  const items = names.map((name, i) => ({ name, data: data[i] }));
  reconcile(
    $("#app-data"),
    "data-app",
    items,
    (it) => it.name,
    () =>
      h(
        "section",
        { class: "app" },
        h("header", {}, h("h3", { class: "app-name" }), h("span", { class: "summary muted" })),
        h("ul", { class: "access" }),
        h("div", { class: "app-grid" },
          h("div", {},
            h("h4", {}, "Documents"),
            h("div", { class: "table-wrap" },
              h("table", {},
                h("thead", {}, h("tr", {}, h("th", {}, "Document"), h("th", {}, "Heads"), h("th", {}, ""))),
                h("tbody", { class: "docs" })))),
          h("div", {},
            h("h4", {}, "Key-value buckets"),
            h("div", { class: "table-wrap" },
              h("table", {},
                h("thead", {}, h("tr", {}, h("th", {}, "Bucket"), h("th", {}, "Keys"))),
                h("tbody", { class: "buckets" })))),
          h("div", {},
            h("h4", {}, "Sync with paired devices"),
            h("div", { class: "table-wrap" },
              h("table", {},
                h("thead", {}, h("tr", {}, h("th", {}, "Device"), h("th", {}, "Status"), h("th", {}, "State"))),
                h("tbody", { class: "sync" }))))),
      ),
    (sec, it) => renderOneApp(sec, it.name, it.data, apps),
    () => h("p", { class: "muted", text: "No app has stored data yet." }),
  );
}

function renderOneApp(sec, name, data, apps) {
  setText($(".app-name", sec), name);

  // Who may use this namespace.
  const access = [
    ...(apps.origins || [])
      .filter((o) => o.app === name)
      .map((o) => ({ key: `o:${o.origin}`, text: o.origin, state: o.state })),
    ...(apps.native || []).filter((n) => n.name === name).map((n) => ({ key: `n:${n.name}`, text: "native app (token)", state: "native" })),
  ];
  reconcile(
    $(".access", sec),
    "data-key",
    access,
    (a) => a.key,
    () => h("li", {}, h("span", { class: "who mono" }), " ", h("span", { class: "state pill" })),
    (li, a) => {
      setText($(".who", li), a.text);
      const pill = $(".state", li);
      setText(pill, a.state);
      setAttr(pill, "data-state", a.state);
    },
    () => h("li", { class: "muted", text: "No origin or native app has access to this namespace." }),
  );

  if (!data) {
    setText($(".summary", sec), "could not read this app's data (see the error above)");
    return;
  }
  const docs = [...(data.docs || [])].sort(
    (a, b) => Number(!!a.deleted) - Number(!!b.deleted) || String(a.doc).localeCompare(String(b.doc)),
  );
  const live = docs.filter((d) => !d.deleted).length;
  const buckets = data.buckets || [];
  setText(
    $(".summary", sec),
    `${plural(live, "document", "documents")}${docs.length > live ? ` (+${docs.length - live} deleted)` : ""} · ${plural(buckets.length, "bucket", "buckets")}`,
  );

  reconcile(
    $(".docs", sec),
    "data-doc",
    docs,
    (d) => d.doc,
    () => h("tr", {}, h("td", { class: "doc-id mono" }), h("td", { class: "heads" }), h("td", { class: "doc-state muted" })),
    (tr, d) => {
      const heads = d.heads || [];
      setText($(".doc-id", tr), d.doc);
      const hc = $(".heads", tr);
      setText(hc, heads.length);
      setAttr(hc, "title", heads.length ? heads.map((x) => x.slice(0, 12)).join(" ") : "no changes");
      setText($(".doc-state", tr), d.deleted ? "deleted" : heads.length > 1 ? "concurrent edits merged" : "");
      tr.classList.toggle("deleted", !!d.deleted);
    },
    emptyRow("No documents.", 3),
  );

  reconcile(
    $(".buckets", sec),
    "data-bucket",
    [...buckets].sort((a, b) => String(a.bucket).localeCompare(String(b.bucket))),
    (b) => b.bucket,
    () => h("tr", {}, h("td", { class: "bucket mono" }), h("td", { class: "keys" })),
    (tr, b) => {
      setText($(".bucket", tr), b.bucket);
      setText($(".keys", tr), plural(b.keys, "key", "keys"));
    },
    emptyRow("No key-value data.", 2),
  );

  reconcile(
    $(".sync", sec),
    "data-device",
    [...(data.devices || [])].sort((a, b) => String(a.name).localeCompare(String(b.name))),
    (d) => d.device,
    () => h("tr", {}, h("td", { class: "name" }), h("td", {}, h("span", { class: "presence pill" })), h("td", { class: "sync-state" })),
    (tr, d) => {
      setText($(".name", tr), d.name || d.device.slice(0, 12));
      const pres = $(".presence", tr);
      const p = d.online === true ? "online" : d.online === false ? "offline" : "engine off";
      setText(pres, p);
      setAttr(pres, "data-state", d.online === true ? "online" : "offline");
      const pending = d.unacknowledged || [];
      const st = $(".sync-state", tr);
      setText(st, d.sync_on === false ? "sync off" : pending.length === 0 ? "in sync" : `${pending.length} pending`);
      setAttr(st, "title", pending.length ? `Not yet acknowledged: ${pending.join(", ")}` : "Every document acknowledged");
      tr.classList.toggle("behind", pending.length > 0);
    },
    emptyRow("No paired device.", 3),
  );
}

// ---------------------------------------------------------------------------
// Actions.

/** Runs an action: errors go to #error; the page refreshes afterwards. */
async function act(fn) {
  errors.action = null;
  renderError();
  try {
    return await fn();
  } catch (e) {
    showError("action", e);
    return undefined;
  } finally {
    refresh();
  }
}

let pairing = false;

function setPairing(on, text) {
  pairing = on;
  $("#pair-invite").disabled = on;
  $("#join-button").disabled = on;
  if (text !== undefined) setText($("#pair-status"), text);
  $("#pair-status").classList.toggle("busy", on);
}

function pairedText(dev) {
  const learned = Array.isArray(dev.also_learned) ? dev.also_learned.length : Number(dev.also_learned) || 0;
  let text = `Paired with ${dev.name || "(unnamed device)"} (${dev.fingerprint}); both devices confirmed code ${dev.safety_code}.`;
  if (learned > 0) text += ` Also learned ${plural(learned, "other device", "other devices")} of yours.`;
  return text;
}

/** Shows a pairing's code and resolves to the user's answer (the Yes / No buttons). */
function askCode(check) {
  setText($("#pair-code"), check.code);
  setText($("#pair-peer"), `${check.name || "(unnamed device)"} (${check.fingerprint})`);
  $("#pair-confirm").hidden = false;
  setText($("#pair-status"), "Compare the code with the other device's screen.");
  return new Promise((resolve) => {
    const answer = (yes) => {
      $("#pair-yes").onclick = null;
      $("#pair-no").onclick = null;
      $("#pair-confirm").hidden = true;
      setText($("#pair-status"), yes ? "Confirmed here: waiting for the other device's confirmation…" : "Declined: nothing was stored.");
      resolve(yes);
    };
    $("#pair-yes").onclick = () => answer(true);
    $("#pair-no").onclick = () => answer(false);
  });
}

async function startInvite() {
  if (pairing) return;
  errors.action = null;
  renderError();
  setPairing(true, "Opening an invite…");
  try {
    const inv = await masq.pairInvite(undefined, { confirm: askCode });
    $("#invite-text").value = inv.invite;
    const qr = $("#invite-qr");
    if (inv.qr_svg) qr.innerHTML = inv.qr_svg; // our own store's markup
    else {
      qr.textContent = "";
      qr.append(h("pre", { class: "qr-text", text: inv.qr || "" }));
    }
    $("#invite-box").hidden = false;
    setText($("#pair-status"), "Invite open: waiting for the other device… (run `masq pair join` there, or paste the invite into its manager)");
    const dev = await inv.paired;
    setPairing(false, pairedText(dev));
  } catch (e) {
    setPairing(false, `Pairing failed: ${describe(e)}`);
    showError("action", e);
  } finally {
    $("#invite-box").hidden = true;
    $("#pair-confirm").hidden = true;
    $("#invite-text").value = "";
    $("#invite-qr").textContent = "";
    setPairing(false);
    refresh();
  }
}

async function joinInvite() {
  if (pairing) return;
  const input = $("#join-input");
  const invite = input.value.trim();
  errors.action = null;
  renderError();
  if (!invite) {
    setText($("#pair-status"), "Paste an invite (masq:pair?…) first.");
    input.focus();
    return;
  }
  setPairing(true, "Joining: waiting for the other device…");
  try {
    const dev = await masq.pairJoin(invite, { confirm: askCode });
    input.value = "";
    setPairing(false, pairedText(dev));
  } catch (e) {
    setPairing(false, `Pairing failed: ${describe(e)}`);
    showError("action", e);
  } finally {
    $("#pair-confirm").hidden = true;
    setPairing(false);
    refresh();
  }
}

async function copyInvite() {
  const ta = $("#invite-text");
  try {
    await navigator.clipboard.writeText(ta.value);
    setText($("#invite-copy"), "Copied");
  } catch (_) {
    ta.select();
    const ok = document.execCommand && document.execCommand("copy");
    setText($("#invite-copy"), ok ? "Copied" : "Select and copy");
  }
  setTimeout(() => setText($("#invite-copy"), "Copy invite"), 2000);
}

function wireActions() {
  $("#pair-invite").addEventListener("click", startInvite);
  $("#sync-paused").addEventListener("change", (e) =>
    act(() => masq.request(e.target.checked ? "sync.pause" : "sync.resume")),
  );
  $("#join-button").addEventListener("click", joinInvite);
  $("#invite-copy").addEventListener("click", copyInvite);
  $("#invite-text").addEventListener("focus", (e) => e.target.select());

  $("#rename-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#device-name");
    const name = input.value.trim();
    if (!name) return;
    act(async () => {
      await masq.request("devices.name", { name });
      input.value = "";
    });
  });

  $("#native-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#native-name");
    const name = input.value.trim();
    if (!name) return;
    act(async () => {
      const { token } = await masq.request("apps.add", { name });
      input.value = "";
      const box = $("#native-token");
      setText($(".token-app", box), name);
      $(".token-value", box).value = token;
      box.hidden = false;
      $(".token-value", box).select();
    });
  });
  $("#native-token .token-done").addEventListener("click", () => {
    const box = $("#native-token");
    $(".token-value", box).value = "";
    box.hidden = true;
  });
}

main().catch((e) => showError("conn", e));
