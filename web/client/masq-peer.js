// masq-peer.js — the page's own store (peer mode): the browser shell around
// masq's Rust core compiled to WebAssembly (pkg/, built from crates/masq-web
// by web/client/build.sh). masq-client.js loads it when no store answers.
//
// What this shell owns, and the core does not: IndexedDB, the clock, the
// event loop, and the one-tab rule. What the core owns: every record's key
// and bytes, documents, the catalog, KV shards and the index, the answers
// and their error codes (the same code as the native store runs).
//
// Durability: requests that arrive together run one after another in the
// core, which collects what they wrote; the shell commits all of it as ONE
// record of the journal (an object store of write frames, like a storage
// engine's log) in a transaction with durability "strict", and answers the
// requests only once it completed. So a write resolves only when it is on
// disk, and a failed commit (quota exhausted) fails exactly the writes it
// carried, with `quota_exceeded`; the store then reopens from IndexedDB (its
// memory was ahead of the disk), and the client reconnects and re-subscribes.
//
// Checkpoints copy journal records into the tables (one object store per
// core table, the records the native store keeps in fjall) in a transaction
// of the tables alone, then delete those journal records in a second one, so
// commits never wait for a checkpoint. Replaying a journal record that is
// already in the tables changes nothing (its writes are applied in order,
// after the older ones), so a crash between the two is harmless; opening
// reads the tables, then replays what the journal still holds. (Why a
// journal: IndexedDB costs ~0.2 ms per record written here, and a KV write
// is two or three records; one record per batch made acknowledgments ~10x
// faster in tests/browser/peer.mjs.)
//
// Tabs: the store is held by one tab at a time, the leader, under a Web Lock
// named after the app. The app's other tabs (same profile, same origin) are
// followers: they send their requests to the leader over a BroadcastChannel
// and get its answers and their subscriptions' events back, so every tab
// reads and writes the same data. When the leader closes, a follower's
// waiting lock request is granted: it reconnects (its requests in flight
// fail with `disconnected`, as when a store goes away), and one of the tabs
// becomes the new leader, opening the store from IndexedDB.
//
// Sync: the leader is the device. It holds the relay connection
// (masq-relay.js) and runs pairing; the Rust core makes and reads every
// frame. Relay frames, timer ticks and pairing frames are jobs in the same
// queue as requests, so a received message's changes, sync states and
// ratchet state land in the same journal record, and the frames a batch
// produced (sealed under ratchet state it advanced) are sent only once that
// record is committed. Each job's effects are the core's; the shell only
// carries bytes.

import { RelaySocket, pairingSocket, splitFrames, relayUrls, defaultDeviceName, SYNC_TICK_MS, PAIR_LINGER_MS } from "./masq-relay.js";

/** IndexedDB schema version: one object store per core table, and the journal. */
const DB_VERSION = 1;
/** The object store of committed write frames not yet copied into the tables. */
const JOURNAL = "journal";
/**
 * Past this many journal bytes, commits wait for the checkpoint: memory
 * (replayed at open) and open time stay bounded when writes outpace it.
 */
const MAX_JOURNAL_BYTES = 32 * 1024 * 1024;
/** Close code when a commit failed and the store must be reopened. */
const CLOSE_REOPEN = 4500;

/**
 * The core's WebAssembly instance the page's stores run on (a promise of
 * the glue module, loaded once), and its generation. A trap (a Rust panic)
 * leaves an instance unusable, maybe in the middle of a borrow: every
 * store on it closes, and the next open loads a fresh instance (the glue
 * module imported again under another URL, so it gets its own memory).
 */
let core = null;
let coreGeneration = 0;
/** The stores open on the current instance. */
const liveStores = new Set();

/** Loads the WebAssembly core (once per generation); resolves to its module. */
export function loadWasm() {
  if (!core) {
    const glue = new URL(`./pkg/masq_web.js${coreGeneration ? `?instance=${coreGeneration}` : ""}`, import.meta.url);
    core = import(glue.href).then(async (m) => {
      await m.default({ module_or_path: new URL("./pkg/masq_web_bg.wasm", import.meta.url) });
      return m;
    });
    core.catch(() => (core = null)); // a failed load is tried again at the next open
  }
  return core;
}

/** How many times the core was loaded afresh after a trap (for tests). */
export function coreRestarts() {
  return coreGeneration;
}

/**
 * The instance of generation `gen` failed: every store on it closes (the
 * clients reopen them), and the next open loads a fresh one.
 */
function retireCore(gen) {
  if (gen !== coreGeneration) return;
  coreGeneration += 1;
  core = null;
  for (const t of [...liveStores]) t.close(CLOSE_REOPEN);
}

/** The crypto known answers checked inside the wasm build (count matched). */
export async function checkKnownAnswers() {
  return (await loadWasm()).knownAnswers();
}

/**
 * The clock of the sync engine's timers (handshake resends, resync): wall
 * time that never steps back while the page lives (Date.now() follows the
 * system clock, which may).
 */
function syncClock() {
  return performance.timeOrigin + performance.now();
}

/** Longest a pairing waits for the other device, whatever its invite says. */
const MAX_PAIR_WAIT_MS = 10 * 60 * 1000;

/** The IndexedDB database of `app`'s store. */
export function databaseName(app) {
  return `masq:${app}`;
}

function promised(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function openDb(app, names) {
  const req = indexedDB.open(databaseName(app), DB_VERSION);
  req.onupgradeneeded = () => {
    for (const n of [...names, JOURNAL]) if (!req.result.objectStoreNames.contains(n)) req.result.createObjectStore(n);
  };
  return promised(req);
}

/** The Web Lock the leader holds, and the BroadcastChannel of the app's tabs. */
function lockName(app) {
  return `masq-store:${app}`;
}

/**
 * Without Web Locks (an insecure context: plain http:// other than
 * localhost; old browsers) two tabs could write over each other's journal
 * and chunks, so peer mode is refused.
 */
function requireLocks() {
  if (!(navigator.locks && navigator.locks.request && typeof BroadcastChannel === "function")) {
    const e = new Error(
      "peer mode needs Web Locks and BroadcastChannel, so two tabs never write over each other: serve the page from https:// or localhost",
    );
    e.code = "unsupported";
    throw e;
  }
}

/**
 * Takes the app's lock if no other tab holds it; resolves to a function that
 * releases it, or null (another tab leads).
 */
function tryLock(app) {
  return new Promise((resolve, reject) => {
    navigator.locks
      .request(lockName(app), { mode: "exclusive", ifAvailable: true }, (lock) => {
        if (!lock) return resolve(null);
        return new Promise((release) => resolve(release));
      })
      .catch(reject);
  });
}

/**
 * Opens `app`'s store for this page: as the leader (this tab holds the
 * store: every record read into the core) or as a follower of the tab that
 * does. Resolves to a socket-like transport for masq-client.js (send,
 * onmessage, onclose, close, start).
 */
export async function openPeer(app) {
  requireLocks();
  const m = await loadWasm();
  const gen = coreGeneration;
  const names = m.tableNames();
  const release = await tryLock(app);
  if (!release) return new FollowerTransport(app);
  try {
    const db = await openDb(app, names);
    const store = new m.WebStore(app);
    const tx = db.transaction([...names, JOURNAL], "readonly");
    const all = (name) => {
      const os = tx.objectStore(name);
      return Promise.all([promised(os.getAllKeys()), promised(os.getAll())]);
    };
    const [tables, journal] = await Promise.all([Promise.all(names.map(all)), all(JOURNAL)]);
    tables.forEach(([keys, values], i) => {
      for (let j = 0; j < keys.length; j++) store.load(i, new Uint8Array(keys[j]), values[j]);
    });
    // Committed batches the last checkpoint did not copy yet, in order.
    const [seqs, frames] = journal;
    seqs.forEach((seq, j) => store.replay(frames[j]));
    const pending = seqs.map((seq, j) => ({ seq, frames: frames[j] }));
    if (gen !== coreGeneration) throw Object.assign(new Error("the page's store failed while opening"), { code: "storage" });
    const t = new PeerTransport(app, db, store, names, release, pending);
    t._coreGen = gen;
    liveStores.add(t);
    return t;
  } catch (e) {
    release();
    throw e;
  }
}

/** A tab that is not the leader: its requests go to the leader's tab. */
class FollowerTransport {
  constructor(app) {
    this.app = app;
    /** This tab's name on the channel. */
    this.tab = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    this._channel = new BroadcastChannel(lockName(app));
    this._channel.onmessage = (ev) => this._onChannel(ev.data);
    /** Requests written before the leader said it serves. */
    this._waiting = [];
    this._leaderReady = false;
    this._closed = false;
    this.onmessage = null;
    this.onclose = null;
    this.stats = null;
    // A lock of this tab's own, so the leader can tell it still lives.
    navigator.locks
      .request(`${lockName(app)}/tab/${this.tab}`, () => new Promise((r) => (this._releaseTabLock = r)))
      .catch(() => {});
    // Granted once the leader is gone: reconnect, and maybe lead.
    this._abort = new AbortController();
    navigator.locks
      .request(lockName(app), { signal: this._abort.signal }, () => {
        if (!this._closed) this.close(CLOSE_REOPEN);
      })
      .catch(() => {});
  }

  start() {
    this._deliver(JSON.stringify({ state: "peer", app: this.app }));
    this._channel.postMessage({ type: "hello", tab: this.tab });
  }

  send(text) {
    if (this._closed) return;
    if (this._leaderReady) this._channel.postMessage({ type: "req", tab: this.tab, text });
    else this._waiting.push(text);
  }

  close(code = 1000) {
    if (this._closed) return;
    this._closed = true;
    try {
      this._channel.postMessage({ type: "bye", tab: this.tab });
    } catch (_) {
      // The channel is closed already.
    }
    this._channel.close();
    this._abort.abort();
    if (this._releaseTabLock) this._releaseTabLock();
    const cb = this.onclose;
    if (cb) setTimeout(() => cb({ code }), 0);
  }

  _onChannel(m) {
    if (this._closed || !m) return;
    if (m.type === "leader-ready" && !this._leaderReady) {
      this._leaderReady = true;
      for (const text of this._waiting.splice(0)) this.send(text);
    } else if ((m.type === "ans" || m.type === "event") && m.tab === this.tab) {
      this._deliver(m.text);
    }
  }

  _deliver(text) {
    if (this.onmessage && !this._closed) this.onmessage({ data: text });
  }
}

/** Resolves when `tx` completed, rejects if it failed. */
function completed(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new DOMException("the transaction was aborted", "AbortError"));
  });
}

/** Applies write frames (crates/masq-web/src/tables.rs) to the tables of `tx`, in order. */
function applyFrames(tx, names, frames) {
  const view = new DataView(frames.buffer, frames.byteOffset, frames.byteLength);
  const stores = names.map((n) => tx.objectStore(n));
  let at = 0;
  const field = () => {
    const len = view.getUint32(at, true);
    at += 4;
    const bytes = frames.slice(at, at + len); // a copy: its own buffer
    at += len;
    return bytes;
  };
  while (at < frames.length) {
    const kind = frames[at];
    const os = stores[frames[at + 1]];
    at += 2;
    const key = field();
    if (kind === 0) os.put(field(), key);
    else if (kind === 1) os.delete(key);
    else {
      const end = prefixEnd(key);
      os.delete(end ? IDBKeyRange.bound(key, end, false, true) : IDBKeyRange.lowerBound(key));
    }
  }
}

/** The first key after every key starting with `prefix` (null: none). */
function prefixEnd(prefix) {
  const end = Uint8Array.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.slice(0, i + 1);
    }
  }
  return null;
}

/** The `op` of a request the shell serves itself (pairing), else null; parses only what may be one. */
function opOf(text) {
  if (!text.includes('"pair.')) return null;
  try {
    const op = JSON.parse(text).op;
    return typeof op === "string" ? op : null;
  } catch (_) {
    return null;
  }
}

/** A request the shell serves itself, parsed: `req` ({} if it is no JSON) and its `id` (0 if none). */
function parsedRequest(text) {
  let req;
  try {
    req = JSON.parse(text);
  } catch (_) {
    req = {};
  }
  return { req, id: typeof req.id === "number" ? req.id : 0 };
}

/** The error answer of a request whose batch could not be committed. */
function commitError(id, e) {
  const quota = e && (e.name === "QuotaExceededError" || /quota/i.test(String(e.message)));
  return JSON.stringify({
    id,
    error: quota
      ? { code: "quota_exceeded", message: "the browser's storage quota for this site is exhausted; nothing of this batch of requests was kept" }
      : { code: "storage", message: `IndexedDB: ${(e && e.message) || e}; nothing of this batch of requests was kept` },
  });
}

/** The page's store behind the interface of a WebSocket to a store. */
class PeerTransport {
  constructor(app, db, store, names, release, pending) {
    this.app = app;
    this._db = db;
    this._store = store;
    this._names = names;
    this._release = release;
    /** Journal records not yet copied into the tables: {seq, frames}, in order. */
    this._journal = pending;
    this._journalBytes = pending.reduce((n, e) => n + e.frames.length, 0);
    this._nextSeq = pending.length ? pending[pending.length - 1].seq + 1 : 1;
    /** The running checkpoint, or null. */
    this._checkpoint = null;
    /** Why the last checkpoint failed (null: it did not). */
    this._checkpointError = null;
    /** Requests to run: {text, tab} (tab: a follower's name, null for this tab). */
    this._queue = [];
    this._running = false;
    this._closed = false;
    this.onmessage = null;
    this.onclose = null;
    /** The app's other tabs, and which follower owns which subscription. */
    this._channel = new BroadcastChannel(lockName(app));
    this._channel.onmessage = (ev) => this._onChannel(ev.data);
    this._subOwners = new Map();
    /** What the store did, for benchmarks: batches, requests, ms in the core and in commits, bytes committed. */
    this.stats = { batches: 0, requests: 0, execMs: 0, commitMs: 0, bytes: 0 };
    /** The device's relay connection: its events are jobs of the queue. */
    this._relay = new RelaySocket({
      onOpen: (conn) => this._job({ kind: "relay-open", conn }),
      onFrame: (bytes) => this._job({ kind: "relay-frame", bytes }),
      onClose: () => this._job({ kind: "relay-closed" }),
    });
    /** The relay socket the core's frames are for (set by its relay-open job). */
    this._relayConn = 0;
    this._tick = null;
    /** Pairings under way: {pairing, socket, id, tab, invite, timer}. */
    this._pairings = new Set();
  }

  /** Announces the state, as a store does first on every connection. */
  start() {
    this._deliver(JSON.stringify({ state: "peer", app: this.app }));
    this._channel.postMessage({ type: "leader-ready" });
    if (this._journal.length) this._startCheckpoint();
    this._job({ kind: "init" });
    this._tick = setInterval(() => {
      if (this._relay.isOpen) this._job({ kind: "tick" });
    }, SYNC_TICK_MS);
  }

  /** Queues work for the core that is not a request (relay, timers, pairing). */
  _job(job) {
    this._enqueue(null, null, job);
  }

  /** Connects to the relay once this device has one and a paired device. */
  _ensureRelay() {
    const url = this._store.relayUrl();
    if (url && this._store.peerCount() > 0) this._relay.start(url);
    else this._relay.stop();
  }

  /** A follower's message. */
  _onChannel(m) {
    if (this._closed || !m) return;
    if (m.type === "hello") this._channel.postMessage({ type: "leader-ready" });
    else if (m.type === "req" && typeof m.tab === "string" && typeof m.text === "string") this._enqueue(m.text, m.tab);
    else if (m.type === "bye") this._dropSubscriptions([m.tab]);
  }

  /** Ends the subscriptions of followers that left (`tabs`). */
  _dropSubscriptions(tabs) {
    for (const [sub, tab] of this._subOwners) {
      if (!tabs.includes(tab)) continue;
      this._subOwners.delete(sub);
      this._store.request(JSON.stringify({ id: 0, op: "unsubscribe", sub }), Date.now());
    }
  }

  /** Followers that closed without a word (a killed tab): their subscriptions go. */
  async _sweepFollowers() {
    const held = new Set(((await navigator.locks.query()).held || []).map((l) => l.name));
    if (this._closed) return;
    const gone = [...new Set(this._subOwners.values())].filter((tab) => !held.has(`${lockName(this.app)}/tab/${tab}`));
    if (gone.length) this._dropSubscriptions(gone);
  }

  /** Sends an answer or event to the tab it is for. */
  _route(tab, text) {
    if (tab === null) this._deliver(text);
    else if (!this._closed) this._channel.postMessage({ type: text.startsWith('{"sub"') ? "event" : "ans", tab, text });
  }

  /** Commits one batch's frames as a journal record, durably. */
  async _commit(frames) {
    while (this._journalBytes > MAX_JOURNAL_BYTES && this._checkpoint) await this._checkpoint;
    // Checkpoints keep failing (a full disk, most likely): the journal must
    // not grow without end, in memory and at the next open.
    if (this._journalBytes > MAX_JOURNAL_BYTES && this._checkpointError) throw this._checkpointError;
    const seq = this._nextSeq++;
    const tx = this._db.transaction([JOURNAL], "readwrite", { durability: "strict" });
    tx.objectStore(JOURNAL).put(frames, seq);
    await completed(tx);
    this._journal.push({ seq, frames });
    this._journalBytes += frames.length;
    this._startCheckpoint();
  }

  /** Resolves once every committed write is copied into the tables (for benchmarks and tests). */
  async checkpointed() {
    while (this._journal.length && !this._closed) {
      this._startCheckpoint();
      await this._checkpoint;
    }
  }

  /** Copies the journal into the tables, unless a checkpoint runs already. */
  _startCheckpoint() {
    if (this._checkpoint || this._closed) return;
    this._checkpoint = (async () => {
      try {
        while (this._journal.length && !this._closed) {
          const batch = this._journal.slice();
          const tables = this._db.transaction(this._names, "readwrite", { durability: "strict" });
          for (const e of batch) applyFrames(tables, this._names, e.frames);
          await completed(tables);
          const drop = this._db.transaction([JOURNAL], "readwrite");
          drop.objectStore(JOURNAL).delete(IDBKeyRange.bound(batch[0].seq, batch[batch.length - 1].seq));
          await completed(drop);
          this._journal.splice(0, batch.length);
          this._journalBytes -= batch.reduce((n, e) => n + e.frames.length, 0);
          this._checkpointError = null;
        }
      } catch (e) {
        this._checkpointError = e;
        // The journal keeps the writes (replayed at the next open); retried
        // after the next commit.
        if (!this._closed) console.warn("masq: checkpoint failed; the journal keeps the writes", e);
      } finally {
        this._checkpoint = null;
      }
    })();
  }

  send(text) {
    this._enqueue(text, null);
  }

  _enqueue(text, tab, job = null) {
    if (this._closed) return;
    this._queue.push({ text, tab, job });
    if (!this._running) {
      this._running = true;
      queueMicrotask(() => this._run());
    }
  }

  close(code = 1000) {
    if (this._closed) return;
    this._closed = true;
    liveStores.delete(this);
    // Each step on its own: after a trap the core may refuse even to free
    // (an object still borrowed), and the lock must be released whatever
    // happens, or no tab could open the store again.
    const step = (f) => {
      try {
        f();
      } catch (e) {
        console.warn("masq: closing the page's store", e);
      }
    };
    step(() => clearInterval(this._tick));
    step(() => this._relay.stop());
    for (const p of [...this._pairings])
      step(() => {
        // The other device hears "declined", not just "left" (unless the
        // core trapped: then it only hears the socket close).
        step(() => {
          p.pairing.abandon();
          for (const f of splitFrames(p.pairing.takeFrames())) p.socket.send(f.slice());
        });
        this._endPairing(p, { code: "disconnected", message: "the page's store closed" });
      });
    step(() => this._channel.close());
    step(() => this._db.close());
    step(() => this._store.free());
    step(() => this._release());
    const cb = this.onclose;
    if (cb) setTimeout(() => cb({ code }), 0);
  }

  _deliver(text) {
    if (this.onmessage && !this._closed) this.onmessage({ data: text });
  }

  /** Runs what arrived together, commits it as one transaction, answers. */
  async _run() {
    try {
      while (this._queue.length && !this._closed) await this._runBatch(this._queue.splice(0));
    } catch (e) {
      // The core trapped (a wasm panic leaves the module unusable) or the
      // shell failed: nothing more runs here; the client reopens the store.
      console.error("masq: the page's store failed; reopening", e);
      this.close(CLOSE_REOPEN);
      // The instance may be broken for every store on it: a fresh one.
      retireCore(this._coreGen);
    } finally {
      this._running = false;
    }
  }

  /** Runs one job in the core; `after` gets what must wait for the commit. */
  _runJob(job, after) {
    const now = syncClock();
    switch (job.kind) {
      case "init":
        this._store.setDefaultName(defaultDeviceName(this.app));
        after.push(() => this._ensureRelay());
        break;
      case "relay-open":
        this._store.relayOpened();
        this._relayConn = job.conn;
        break;
      case "relay-frame": {
        const was = this._store.relayReady();
        const why = this._store.relayFrame(job.bytes, now);
        if (why) {
          console.warn(`masq: relay connection: ${why}; reconnecting`);
          after.push(() => this._relay.restart());
        } else if (!was && this._store.relayReady()) {
          // Accepted: the next loss reconnects quickly again.
          after.push(() => this._relay.accepted());
        }
        break;
      }
      case "relay-closed":
        this._store.relayClosed();
        break;
      case "tick":
        this._store.syncTick(now);
        break;
      case "pair-frame":
        this._pairingStep(job.p, (p) => p.pairing.onFrame(job.bytes), "pairing_failed", after);
        break;
      case "pair-confirm":
        this._pairingStep(job.p, (p) => p.pairing.confirm(job.yes), job.yes ? "pairing_failed" : "pairing_declined", after);
        break;
      case "pair-closed":
        if (!job.p.done && !job.p.finishing)
          after.push(() => this._endPairing(job.p, { code: "pairing_failed", message: "the relay closed the pairing connection" }));
        break;
      case "pair-expired":
        if (!job.p.done && !job.p.finishing) {
          job.p.pairing.abandon();
          this._pairingFailed(job.p, "pairing_failed", "the invite expired before both devices confirmed", after);
        }
        break;
      default:
        throw new Error(`unknown job ${job.kind}`);
    }
  }

  /** One step of a pairing (a frame in, the user's answer): `step` may throw, which ends it with `failCode`. */
  _pairingStep(p, step, failCode, after) {
    if (p.done || p.finishing) return;
    try {
      step(p);
    } catch (e) {
      this._pairingFailed(p, failCode, e, after);
      return;
    }
    this._pairingMoved(p, after);
  }

  /**
   * What a pairing's step leaves to do, after the batch commits: its code
   * goes to the tab that asked (as a `pair_code` message; with `yes` it is
   * confirmed at once), its frames to the relay, and once both users said
   * yes its records are staged with this batch and the pairing ends.
   */
  _pairingMoved(p, after) {
    const code = p.pairing.takeCode();
    let codeMessage = null;
    if (code !== undefined && code !== null) {
      p.codeShown = true;
      if (p.yes) p.answered = true;
      // With `yes` the code is shown, not asked (as a store marks it).
      codeMessage = JSON.stringify({ id: p.id, pair_code: { ...JSON.parse(code), ...(p.yes ? { answered: true } : {}) } });
      if (p.yes) {
        try {
          p.pairing.confirm(true);
        } catch (e) {
          this._pairingFailed(p, "pairing_failed", e, after);
          return;
        }
      }
    }
    let paired = null;
    if (p.pairing.isReady()) {
      try {
        paired = JSON.parse(this._store.pairFinish(p.pairing, Date.now()));
        // Paired (committed with this batch): no expiry or closed socket
        // may answer otherwise now.
        p.finishing = true;
      } catch (e) {
        this._pairingFailed(p, "pairing_failed", e, after);
        return;
      }
    }
    const out = splitFrames(p.pairing.takeFrames()).map((f) => f.slice());
    after.push(() => {
      for (const f of out) p.socket.send(f);
      if (codeMessage) this._route(p.tab, codeMessage);
      if (paired) {
        this._endPairing(p, null, paired);
        this._ensureRelay();
      }
    });
  }

  /** A pairing failed: what it still has to say (a decline) goes out, then the error to whoever asked. */
  _pairingFailed(p, code, e, after) {
    let out = [];
    try {
      out = splitFrames(p.pairing.takeFrames()).map((f) => f.slice());
    } catch (_) {
      // A trapped instance has nothing more to say.
    }
    after.push(() => {
      for (const f of out) p.socket.send(f);
      this._endPairing(p, { code, message: String((e && e.message) || e) });
    });
  }

  /**
   * Starts `pair.invite` (answered at once with the invite; a `pair_code`
   * message, then a `paired` message follow) or `pair.join` (a `pair_code`
   * message, then the answer once both users said yes), as a store's admin
   * protocol does.
   */
  _startPairing(text, tab, op, answers) {
    const { req, id } = parsedRequest(text);
    const fail = (code, message) => answers.push({ answer: JSON.stringify({ id, error: { code, message } }), tab, wrote: false });
    let pairing;
    try {
      if (op === "pair.invite") {
        const relay = req.relay || this._store.relayUrl();
        if (!relay) return fail("no_relay", "no relay configured: give one (pair.invite with relay)");
        pairing = this._store.pairInvite(relay, Date.now());
      } else {
        if (typeof req.invite !== "string") return fail("bad_request", "pair.join needs { invite }");
        pairing = this._store.pairJoin(req.invite, Date.now());
      }
    } catch (e) {
      return fail(op === "pair.invite" ? "bad_request" : "bad_invite", String(e.message || e));
    }
    const p = { pairing, id, tab, invite: op === "pair.invite", yes: req.yes === true, codeShown: false, answered: false, done: false, finishing: false, socket: null, timer: null };
    // The relay named by an invite is the inviter's word: a URL the page
    // cannot open is a bad invite, not the end of the store.
    const url = relayUrls(pairing.relay())[0];
    try {
      if (!url) throw new Error(`no ws:// or wss:// relay in ${JSON.stringify(pairing.relay())}`);
      p.socket = pairingSocket(new URL(url).href, {
        onFrame: (bytes) => this._job({ kind: "pair-frame", p, bytes }),
        onClose: () => this._job({ kind: "pair-closed", p }),
      });
    } catch (e) {
      try {
        pairing.free();
      } catch (_) {
        // Nothing more to release.
      }
      return fail(op === "pair.invite" ? "bad_request" : "bad_invite", `the relay of the invite: ${e.message || e}`);
    }
    p.timer = setTimeout(
      () => this._job({ kind: "pair-expired", p }),
      Math.min(MAX_PAIR_WAIT_MS, Math.max(0, pairing.expiresMs() - Date.now())),
    );
    this._pairings.add(p);
    if (p.invite)
      answers.push({
        answer: JSON.stringify({ id, ok: { invite: pairing.uri(), qr: pairing.qr(), qr_svg: pairing.qrSvg() } }),
        tab,
        wrote: false,
      });
  }

  /** `pair.confirm {pairing, yes}`: the user's answer to the code of a pairing this tab started. */
  _confirmPairing(text, tab, answers, after) {
    const { req, id } = parsedRequest(text);
    // Only a pairing whose code this tab was shown, and that has no answer yet (as a store: not_found otherwise).
    const p = [...this._pairings].find((q) => q.id === req.pairing && q.tab === tab && q.codeShown && !q.answered && !q.done && !q.finishing);
    if (!p || typeof req.yes !== "boolean") {
      const message = !p ? `no pairing ${req.pairing} of this tab waits for an answer` : "pair.confirm needs { pairing, yes }";
      answers.push({ answer: JSON.stringify({ id, error: { code: p ? "bad_request" : "not_found", message } }), tab, wrote: false });
      return;
    }
    p.answered = true;
    this._runJob({ kind: "pair-confirm", p, yes: req.yes }, after);
    answers.push({ answer: JSON.stringify({ id, ok: null }), tab, wrote: false });
  }

  /** Ends a pairing: `error` ({code, message}) or `paired` goes to whoever asked. */
  _endPairing(p, error, paired = null) {
    if (p.done) return;
    p.done = true;
    clearTimeout(p.timer);
    this._pairings.delete(p);
    // The inviter's answer must reach the relay before the socket closes.
    setTimeout(() => p.socket.close(), paired && p.invite ? PAIR_LINGER_MS : 0);
    try {
      p.pairing.free();
    } catch (e) {
      console.warn("masq: freeing a pairing", e); // after a trap; the instance goes anyway
    }
    let text;
    if (p.invite) text = JSON.stringify({ id: p.id, paired: error ? { error } : paired });
    else text = JSON.stringify(error ? { id: p.id, error } : { id: p.id, ok: paired });
    this._route(p.tab, text);
  }

  async _runBatch(batch) {
    const started = performance.now();
    const answers = [];
    /** What runs once the batch is committed (pairing frames, pairing answers). */
    const after = [];
    let followerSubscribed = false;
    let failure = null;
    for (const { text, tab, job } of batch) {
      if (job) {
        try {
          this._runJob(job, after);
        } catch (e) {
          if (e instanceof WebAssembly.RuntimeError) throw e; // a trap: _run retires the instance
          // The core could not stage what the job needs (its storage):
          // the batch is not committed, and the store reopens.
          failure = failure || e;
        }
        continue;
      }
      const op = opOf(text);
      if (op === "pair.invite" || op === "pair.join") {
        this._startPairing(text, tab, op, answers);
        continue;
      }
      if (op === "pair.confirm") {
        this._confirmPairing(text, tab, answers, after);
        continue;
      }
      const before = this._store.pendingWrites();
      const answer = this._store.request(text, Date.now());
      answers.push({ answer, tab, wrote: this._store.pendingWrites() > before });
      if (tab !== null && answer.includes('"ok":{"sub":')) {
        this._subOwners.set(JSON.parse(answer).ok.sub, tab);
        followerSubscribed = true;
      }
    }
    if (followerSubscribed) this._sweepFollowers().catch(() => {});
    let frames = null;
    if (!failure) {
      try {
        // What the batch changed (requests, or a peer's messages, not
        // offered back to it) goes to the paired devices that sync now:
        // the sealed messages wait for this batch's commit.
        this._store.syncFlush();
      } catch (e) {
        if (e instanceof WebAssembly.RuntimeError) throw e;
        failure = e;
      }
    }
    if (!failure && this._store.pendingWrites() > 0) {
      try {
        frames = this._store.takeWrites();
      } catch (e) {
        failure = e;
      }
    }
    if (frames || failure) {
      const executed = performance.now();
      this.stats.execMs += executed - started;
      try {
        if (failure) throw failure;
        this.stats.bytes += frames.length;
        await this._commit(frames);
        this.stats.commitMs += performance.now() - executed;
      } catch (e) {
        if (this._closed) return;
        this._store.takeEvents(); // never delivered: their writes are not on disk
        // Every answer of the batch fails: its reads may have seen the
        // writes that are not on disk.
        for (const a of answers) this._route(a.tab, commitError(JSON.parse(a.answer).id, e));
        // Memory is ahead of the disk: reopen from IndexedDB. Requests
        // queued meanwhile never ran; the client fails them (`disconnected`).
        this.close(CLOSE_REOPEN);
        return;
      }
    }
    if (this._closed) return; // closed while committing: nobody to answer
    // Committed: the frames sealed under it may leave now.
    // Only on the socket they were made for: one that opened meanwhile
    // must begin with its own challenge's answer (what was lost is offered
    // again when sync restarts on it).
    for (const f of splitFrames(this._store.takeFrames())) this._relay.send(f, this._relayConn);
    for (const f of after) f();
    this.stats.batches += 1;
    this.stats.requests += batch.filter((b) => !b.job).length;
    for (const a of answers) this._route(a.tab, a.answer);
    const events = this._store.takeEvents();
    if (events) {
      for (const line of events.split("\n")) {
        if (!line) continue;
        const owner = this._subOwners.get(JSON.parse(line).sub);
        this._route(owner === undefined ? null : owner, line);
      }
    }
  }
}
