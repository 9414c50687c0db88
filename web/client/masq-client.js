// masq-client.js — the browser client of masq. Served by every store at
// /masq-client.js, and shipped in the package folder web/client/ (with the
// browser store: masq-peer.js and pkg/) for apps that serve it themselves.
//
// A dependency-free ES module speaking the app protocol of docs/protocol.md
// ("App protocol"), in one of two modes:
// - store mode: over the WebSocket of the masq store running on this device;
// - peer mode: no store runs here (a phone, a tablet), so the page is the
//   device: the same Rust core, compiled to WebAssembly, keeps the data in
//   IndexedDB (masq-peer.js). The API, the events and the error codes are
//   the same; the state is `peer` instead of `ready`.
//
//   import { connect } from "./masq-client.js";
//   const masq = await connect({ app: "notes" });   // a store if one answers, else peer mode
//   masq.onState(s => console.log(s));   // pending until the user approves
//   await masq.kv.put("theme", "dark");
//   const id = await masq.docs.create([{ op: "put", path: "/title", value: "Hi" }]);
//
// Requests made before the store has approved the page wait (they are sent
// once the state is `ready`); requests in flight when the connection drops
// fail with code `disconnected`. The client reconnects by itself with backoff
// and re-opens every live watch and subscription, which then get a `lagged`
// event (re-read what you show: changes may have happened meanwhile).

/** Longest pause between reconnection attempts, in milliseconds. */
const MAX_BACKOFF_MS = 5000;
/** First pause between reconnection attempts, in milliseconds. */
const MIN_BACKOFF_MS = 200;
/** WebSocket close code the store uses when the app is refused or revoked. */
const CLOSE_REVOKED = 4003;
/** Requests queued while not ready; past this `request` fails (`queue_full`). */
const MAX_QUEUED = 1024;
/**
 * In mode `auto`, how long the local store gets to answer before the page
 * becomes its own device (peer mode). A store on 127.0.0.1 answers in a few
 * milliseconds; a refused connection fails at once.
 */
const STORE_PROBE_MS = 1500;
/** Where a store listens unless told otherwise (`masq store`'s default). */
const DEFAULT_STORE = "http://127.0.0.1:7070";

/** An error answered by the store (or by this client): `code` is stable. */
export class MasqError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "MasqError";
    this.code = code;
  }
}

/**
 * The store that served this module, as a WebSocket URL; a module the app
 * serves itself (from web/client/, next to masq-peer.js) means the default
 * store address.
 */
function defaultUrl() {
  const here = new URL(".", import.meta.url);
  const fromStore = here.hostname === "127.0.0.1" || here.hostname === "localhost" || here.hostname === "[::1]";
  return wsUrl(fromStore && here.port ? here.href : DEFAULT_STORE);
}

/** Maps `http(s)://host[:port][/ws]` to `ws(s)://host[:port]/ws`. */
function wsUrl(base) {
  const u = new URL(base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (!u.pathname.endsWith("/ws")) u.pathname = "/ws";
  u.search = "";
  u.hash = "";
  return u;
}

/**
 * Connects. Resolves once the store said who we are (state `pending` or
 * `ready`), or once the page's own store is open (state `peer`); rejects if
 * the store refuses the app or cannot be reached (store mode).
 *
 * opts.app: the namespace a web page asks for; opts.token: a native or admin
 * token instead (store mode only); opts.url: the store (`http://127.0.0.1:7070`
 * or its `/ws` URL; default: the store that served this module, or
 * 127.0.0.1:7070 when the app serves it itself).
 * opts.mode: `auto` (default: the store if one answers within
 * STORE_PROBE_MS, else peer mode), `store` or `peer`.
 */
export async function connect(opts = {}) {
  const mode = opts.mode || "auto";
  if (!["auto", "store", "peer"].includes(mode))
    throw new MasqError("bad_request", `unknown mode ${JSON.stringify(mode)} (auto, store or peer)`);
  if (mode === "peer") return connectPeer(opts);
  // A token names a store's app: there is no page store to fall back to.
  if (mode === "store" || !opts.app) return connectStore(opts);
  const masq = new Masq(opts);
  const answered = masq._first.then(
    () => true,
    (e) => {
      if (e.code === "unreachable") return false;
      throw e;
    },
  );
  const timeout = new Promise((res) => setTimeout(() => res(false), STORE_PROBE_MS));
  if (await Promise.race([answered, timeout])) return masq;
  answered.catch(() => {}); // closing it below rejects it: nobody waits for that
  masq.close();
  return connectPeer(opts);
}

function connectStore(opts) {
  try {
    const masq = new Masq(opts);
    return masq._first.then(() => masq);
  } catch (e) {
    return Promise.reject(e);
  }
}

async function connectPeer(opts) {
  if (!opts.app) throw new MasqError("bad_request", "peer mode needs { app }");
  const { openPeer } = await import("./masq-peer.js");
  const masq = new Masq({ ...opts, transport: () => openPeer(opts.app) });
  await masq._first;
  return masq;
}

/** One live watch or subscription; survives reconnects. */
class Subscription {
  constructor(masq, request, cb) {
    this._masq = masq;
    this._request = request;
    this._cb = cb;
    this._sub = null;
    this.closed = false;
  }
  /** Stops the events. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    this._masq._subs.delete(this);
    const sub = this._sub;
    this._sub = null;
    if (sub !== null && this._masq._serving()) {
      this._masq._bySub.delete(sub);
      try {
        await this._masq.request("unsubscribe", { sub });
      } catch (_) {
        // The connection went away: nothing left to stop.
      }
    }
  }
}

class Masq {
  constructor(opts) {
    /** Peer mode: opens the page's own store (a socket-like object). */
    this._transport = opts.transport || null;
    this._url = opts.url ? wsUrl(opts.url) : defaultUrl();
    if (opts.token) this._url.searchParams.set("token", opts.token);
    else if (opts.app) this._url.searchParams.set("app", opts.app);
    else throw new MasqError("bad_request", "connect needs { app } or { token }");
    this.state = "connecting";
    this.app = opts.app || null;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, paired}
    this._pairWaiters = new Map(); // pairing request id -> {resolve, reject, onCode}
    this._queue = []; // requests waiting for `ready`
    this._listeners = new Set();
    this._readyWaiters = [];
    this._subs = new Set(); // live Subscription objects
    this._bySub = new Map(); // store's sub id -> Subscription
    this._backoff = MIN_BACKOFF_MS;
    this._closedByUser = false;
    this._everConnected = false;
    this._first = new Promise((resolve, reject) => {
      this._firstResolve = resolve;
      this._firstReject = reject;
    });
    this._open();
  }

  /** Calls `cb(state)` on every state change; returns a function that stops it. */
  onState(cb) {
    this._listeners.add(cb);
    return () => this._listeners.delete(cb);
  }

  /** Resolves when the store serves this app (rejects if it refuses it). */
  ready() {
    if (this._serving()) return Promise.resolve();
    if (this.state === "denied" || this.state === "closed")
      return Promise.reject(new MasqError(this.state, `the connection is ${this.state}`));
    return new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
  }

  /** Sends one raw request (`op` and its arguments); resolves to its `ok`. */
  request(op, args = {}) {
    if (this.state === "denied" || this.state === "closed")
      return Promise.reject(new MasqError(this.state, `the connection is ${this.state}`));
    return new Promise((resolve, reject) => {
      const entry = { msg: { ...args, op }, resolve, reject };
      if (this._serving()) this._send(entry);
      else if (this._queue.length >= MAX_QUEUED)
        reject(new MasqError("queue_full", "too many requests waiting for the store"));
      else this._queue.push(entry);
    });
  }

  /**
   * Admin only (a page in peer mode is its own admin): opens a pairing
   * invite. Resolves to `{invite, qr, qr_svg, code, confirm, paired}`:
   * `code` resolves to `{code, device_id, fingerprint, name}` once the
   * other device has joined; the user compares the six digits with the
   * other screen and answers with `confirm(true|false)` (or give
   * `opts.confirm`, a function of that object returning a boolean or a
   * promise of one). `paired` resolves once both users said yes. Nothing is
   * stored on either device before. `opts.yes` confirms without asking:
   * only for callers that compare the two codes themselves.
   */
  pairInvite(relay, opts = {}) {
    const args = relay ? { relay } : {};
    return this._pair("pair.invite", args, opts).then(({ ok, code, confirm, done }) => ({ ...ok, code, confirm, paired: done }));
  }

  /**
   * Admin only (as `pairInvite`): joins the device that made `invite` (a
   * `masq:` URI). `opts.confirm` is asked with `{code, device_id,
   * fingerprint, name}` and returns whether the other screen shows the same
   * code (a boolean or a promise of one); `opts.yes` confirms without
   * asking (only for callers that compare the codes themselves). Resolves
   * to the paired device once both users said yes.
   */
  pairJoin(invite, opts = {}) {
    if (typeof opts.confirm !== "function" && opts.yes !== true)
      return Promise.reject(new MasqError("bad_request", "pair.join needs opts.confirm (ask the user whether the other device shows the same code) or opts.yes"));
    return this._pair("pair.join", { invite }, opts).then(({ ok }) => ok);
  }

  /**
   * Sends a pairing request. Resolves with its answer (`ok`) and the
   * pairing's `code` promise, `confirm` function and `done` promise (the
   * `paired` message of an invite).
   */
  _pair(op, args, opts) {
    return new Promise((resolve, reject) => {
      const go = () => {
        const id = this._nextId++;
        let codeResolve, codeReject;
        const code = new Promise((res, rej) => ((codeResolve = res), (codeReject = rej)));
        code.catch(() => {}); // a pairing that ends before its code rejects it; callers need not await it
        let answered = false;
        const confirm = (yes) => {
          if (answered) return Promise.resolve(null);
          answered = true;
          return this.request("pair.confirm", { pairing: id, yes: yes === true });
        };
        let doneResolve, doneReject;
        const done = new Promise((res, rej) => ((doneResolve = res), (doneReject = rej)));
        done.catch(() => {}); // callers that never await it get no unhandled rejection
        const onCode = (check) => {
          codeResolve(check);
          if (opts.yes === true || check.answered === true) answered = true;
          else if (typeof opts.confirm === "function")
            Promise.resolve()
              .then(() => opts.confirm(check))
              .then((yes) => confirm(yes === true), () => confirm(false))
              .catch(() => {}); // the pairing's own answer carries the failure
        };
        const fail = (e) => {
          codeReject(e);
          doneReject(e);
        };
        this._pairWaiters.set(id, { resolve: doneResolve, reject: fail, onCode });
        this._pending.set(id, {
          resolve: (ok) => {
            if (op !== "pair.invite") this._pairWaiters.delete(id);
            resolve({ ok, code, confirm, done });
          },
          reject: (e) => {
            this._pairWaiters.delete(id);
            fail(e);
            reject(e);
          },
        });
        const msg = { ...args, op, id };
        if (opts.yes === true) msg.yes = true;
        this._ws.send(JSON.stringify(msg));
      };
      this.ready().then(go, reject);
    });
  }

  /** Closes the connection for good. */
  close() {
    this._closedByUser = true;
    if (this._ws) this._ws.close(1000);
    this._setState("closed");
  }

  _send(entry) {
    const id = this._nextId++;
    this._pending.set(id, entry);
    this._ws.send(JSON.stringify({ ...entry.msg, id }));
  }

  /** Whether requests are served now (`ready`, or `peer`: the page's own store). */
  _serving() {
    return this.state === "ready" || this.state === "peer";
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    if (this._serving()) {
      const waiters = this._readyWaiters.splice(0);
      waiters.forEach((w) => w.resolve());
      const queued = this._queue.splice(0);
      queued.forEach((e) => this._send(e));
    } else if (state === "denied" || state === "closed") {
      const err = new MasqError(state, state === "denied" ? "the store refused this app" : "the connection is closed");
      this._readyWaiters.splice(0).forEach((w) => w.reject(err));
      this._queue.splice(0).forEach((e) => e.reject(err));
      this._firstReject(err);
    }
    for (const cb of this._listeners) {
      try {
        cb(state);
      } catch (e) {
        console.error(e);
      }
    }
  }

  _open() {
    if (this._transport) {
      // Peer mode: the page's own store, behind the same socket interface.
      this._transport().then(
        (t) => {
          if (this._closedByUser) return t.close();
          this._ws = t;
          t.onmessage = (ev) => this._onMessage(ev.data);
          t.onclose = (ev) => this._onClose(ev);
          t.start();
        },
        (e) => {
          const code = e instanceof MasqError ? e.code : (e && e.code) || "storage";
          this._firstReject(new MasqError(code, String((e && e.message) || e)));
          this._setState("closed");
        },
      );
      return;
    }
    const ws = new WebSocket(this._url.href);
    this._ws = ws;
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onclose = (ev) => this._onClose(ev);
    ws.onerror = () => {}; // onclose follows and decides
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (_) {
      return; // The store only sends JSON; ignore what cannot be read.
    }
    if (typeof msg.state === "string") {
      if (msg.app !== undefined) this.app = msg.app;
      this._backoff = MIN_BACKOFF_MS;
      this._everConnected = true;
      if ((msg.state === "ready" || msg.state === "peer") && !this._serving()) this._resubscribe();
      this._setState(msg.state === "revoked" ? "denied" : msg.state);
      this._firstResolve();
      return;
    }
    if (msg.sub !== undefined && msg.event !== undefined) {
      const s = this._bySub.get(msg.sub);
      if (s && !s.closed) {
        try {
          s._cb(msg.event);
        } catch (e) {
          console.error(e);
        }
      }
      return;
    }
    if (msg.pair_code !== undefined) {
      const w = this._pairWaiters.get(msg.id);
      if (w) w.onCode(msg.pair_code);
      return;
    }
    if (msg.paired !== undefined) {
      const w = this._pairWaiters.get(msg.id);
      if (!w) return;
      this._pairWaiters.delete(msg.id);
      if (msg.paired && msg.paired.error) w.reject(new MasqError(msg.paired.error.code, msg.paired.error.message));
      else w.resolve(msg.paired);
      return;
    }
    const entry = this._pending.get(msg.id);
    if (!entry) return;
    this._pending.delete(msg.id);
    if (msg.error) entry.reject(new MasqError(msg.error.code, msg.error.message));
    else entry.resolve(msg.ok);
  }

  _onClose(ev) {
    const err = new MasqError("disconnected", "the connection to the store ended before the answer");
    for (const e of this._pending.values()) e.reject(err);
    this._pending.clear();
    for (const w of this._pairWaiters.values()) w.reject(err);
    this._pairWaiters.clear();
    this._bySub.clear();
    for (const s of this._subs) s._sub = null;
    if (this._closedByUser || this.state === "closed") return;
    if (ev.code === CLOSE_REVOKED || this.state === "denied") {
      this._setState("denied");
      return;
    }
    if (!this._everConnected) {
      // Never got in: say so instead of retrying forever in silence. (Browsers
      // hide the HTTP status of a refused upgrade, so both causes are named.)
      this._firstReject(
        new MasqError(
          "unreachable",
          `no masq store answered at ${this._url.origin}, or it refused the connection ` +
            "(a wrong or old token, or a page origin it does not accept)",
        ),
      );
      this._setState("closed");
      return;
    }
    this._setState("connecting");
    const wait = this._backoff;
    this._backoff = Math.min(this._backoff * 2, MAX_BACKOFF_MS);
    setTimeout(() => {
      if (!this._closedByUser) this._open();
    }, wait);
  }

  /** After a (re)connect: opens every live subscription again. */
  _resubscribe() {
    const again = [...this._subs].filter((s) => s._sub === null && !s.closed);
    for (const s of again) {
      this._send({
        msg: s._request,
        resolve: (ok) => {
          s._sub = ok.sub;
          this._bySub.set(ok.sub, s);
          try {
            s._cb({ type: "lagged", missed: null });
          } catch (e) {
            console.error(e);
          }
        },
        reject: (e) => console.error("masq: could not re-subscribe", e),
      });
    }
  }

  async _subscribe(request, cb) {
    const s = new Subscription(this, request, cb);
    const ok = await this.request(request.op, request);
    s._sub = ok.sub;
    this._subs.add(s);
    this._bySub.set(ok.sub, s);
    return s;
  }

  /**
   * This device's pairing and paired devices. In peer mode the page is its
   * own device and serves these itself; with a store they need the store's
   * admin rights (the store manager does them).
   */
  get pair() {
    return {
      /** Opens an invite through `relay` (ws:// or wss://; default: the relay this device uses):
       *  `{invite, qr, qr_svg, code, confirm, paired}` (see `pairInvite`). */
      invite: (relay, opts) => this.pairInvite(relay, opts),
      /** Joins the device that made the invite (a `masq:` URI) once the user confirmed the
       *  code (`opts.confirm`, see `pairJoin`); resolves to the paired device. */
      join: (invite, opts) => this.pairJoin(invite, opts),
      /** `{me, devices}`: this device and its paired devices (with safety codes and online state). */
      devices: () => this.request("devices.list"),
      /** Removes a paired device (hex id or fingerprint prefix) here and on every other device. */
      remove: (device) => this.request("devices.remove", { device }),
      /** Renames this device, as the others show it. */
      rename: (name) => this.request("devices.name", { name }),
      /** The relay, sync counters and each paired device's state. */
      status: () => this.request("status"),
    };
  }

  /**
   * Whether this app syncs, and with which devices (read only: the user
   * decides in the store manager, or with `masq sync`; a page in peer mode
   * syncs its app with every paired device).
   */
  get sync() {
    return {
      /** `{app, paused, devices: [{name, on, takes}]}`; `takes`: whether
       *  that device said it takes this app (null until it said so in its current session). */
      status: () => this.request("sync.status"),
    };
  }

  /** Key-value API (`bucket` defaults to `default`). */
  get kv() {
    const b = (opts) => (opts && opts.bucket ? { bucket: opts.bucket } : {});
    return {
      /** The value, or undefined if the key is absent. */
      get: async (key, opts) => {
        try {
          return await this.request("kv.get", { ...b(opts), key });
        } catch (e) {
          if (e.code === "not_found") return undefined;
          throw e;
        }
      },
      put: (key, value, opts) => this.request("kv.put", { ...b(opts), key, value }),
      putMany: (entries, opts) => this.request("kv.put_many", { ...b(opts), entries }),
      delete: async (key, opts) => (await this.request("kv.delete", { ...b(opts), key })).deleted,
      list: (opts = {}) => {
        const args = { ...b(opts) };
        if (opts.prefix) args.prefix = opts.prefix;
        if (opts.startAfter !== undefined) args.start_after = opts.startAfter;
        if (opts.limit !== undefined) args.limit = opts.limit;
        return this.request("kv.list", args);
      },
      conflicts: (key, opts) => this.request("kv.conflicts", { ...b(opts), key }),
      watch: (cb, opts = {}) => this._subscribe({ op: "kv.watch", ...b(opts), prefix: opts.prefix || "" }, cb),
    };
  }

  /** Document API: ids are strings, changes are lists of operations. */
  get docs() {
    return {
      create: async (ops = [], message) =>
        (await this.request("doc.create", message ? { ops, message } : { ops })).doc,
      read: (doc, opts = {}) => this.request("doc.get", opts.at ? { doc, at: opts.at } : { doc }),
      change: async (doc, ops, message) =>
        (await this.request("doc.change", message ? { doc, ops, message } : { doc, ops })).heads,
      heads: async (doc) => (await this.request("doc.heads", { doc })).heads,
      history: (doc) => this.request("doc.history", { doc }),
      list: () => this.request("doc.list"),
      delete: async (doc) => {
        await this.request("doc.delete", { doc });
      },
      subscribe: (doc, cb) => this._subscribe(doc ? { op: "doc.subscribe", doc } : { op: "doc.subscribe" }, cb),
    };
  }
}
