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
// core, which collects what they wrote; the shell commits all of it in ONE
// IndexedDB transaction with durability "strict" and answers the requests
// only once it completed. So a write resolves only when it is on disk, and
// a failed commit (quota exhausted) fails exactly the writes it carried, with
// `quota_exceeded`; the store then reopens from IndexedDB (its memory was
// ahead of the disk), and the client reconnects to it and re-subscribes.
//
// One tab at a time: the store is held under a Web Lock named after the app.
// A second tab of the same app waits (state `connecting`) until the first
// closes, then opens the store from IndexedDB, so two copies never write
// over each other. (Sharing one store between open tabs is not built yet.)

import init, { WebStore, tableNames, knownAnswers } from "./pkg/masq_web.js";

/** IndexedDB schema version: one object store per core table. */
const DB_VERSION = 1;
/** Close code when a commit failed and the store must be reopened. */
const CLOSE_REOPEN = 4500;

let wasmReady = null;

/** Loads the WebAssembly module once per page. */
export function loadWasm() {
  if (!wasmReady) wasmReady = init({ module_or_path: new URL("./pkg/masq_web_bg.wasm", import.meta.url) });
  return wasmReady;
}

/** The crypto known answers checked inside the wasm build (count matched). */
export async function checkKnownAnswers() {
  await loadWasm();
  return knownAnswers();
}

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
    for (const n of names) if (!req.result.objectStoreNames.contains(n)) req.result.createObjectStore(n);
  };
  return promised(req);
}

/** Waits for the app's Web Lock; resolves to a function that releases it. */
function acquireLock(app) {
  if (!(navigator.locks && navigator.locks.request)) return Promise.resolve(() => {});
  return new Promise((gotIt, failed) => {
    navigator.locks
      .request(`masq-store:${app}`, { mode: "exclusive" }, () => new Promise((release) => gotIt(release)))
      .catch(failed);
  });
}

/**
 * Opens `app`'s store in this page: waits for the one-tab lock, reads every
 * record into the core. Resolves to a socket-like transport for
 * masq-client.js (send, onmessage, onclose, close, start).
 */
export async function openPeer(app) {
  await loadWasm();
  const names = tableNames();
  const release = await acquireLock(app);
  try {
    const db = await openDb(app, names);
    const store = new WebStore(app);
    const tx = db.transaction(names, "readonly");
    await Promise.all(
      names.map(async (name, i) => {
        const os = tx.objectStore(name);
        const [keys, values] = await Promise.all([promised(os.getAllKeys()), promised(os.getAll())]);
        for (let j = 0; j < keys.length; j++) store.load(i, new Uint8Array(keys[j]), values[j]);
      }),
    );
    return new PeerTransport(app, db, store, names, release);
  } catch (e) {
    release();
    throw e;
  }
}

/** Applies write frames (crates/masq-web/src/tables.rs) in one transaction. */
function commit(db, names, frames) {
  const tx = db.transaction(names, "readwrite", { durability: "strict" });
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
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new DOMException("the transaction was aborted", "AbortError"));
  });
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

/** The error answer of a write whose commit failed. */
function commitError(id, e) {
  const quota = e && (e.name === "QuotaExceededError" || /quota/i.test(String(e.message)));
  return JSON.stringify({
    id,
    error: quota
      ? { code: "quota_exceeded", message: "the browser's storage quota for this site is exhausted; nothing of this write was kept" }
      : { code: "storage", message: `IndexedDB: ${(e && e.message) || e}; nothing of this write was kept` },
  });
}

/** The page's store behind the interface of a WebSocket to a store. */
class PeerTransport {
  constructor(app, db, store, names, release) {
    this.app = app;
    this._db = db;
    this._store = store;
    this._names = names;
    this._release = release;
    this._queue = [];
    this._running = false;
    this._closed = false;
    this.onmessage = null;
    this.onclose = null;
  }

  /** Announces the state, as a store does first on every connection. */
  start() {
    this._deliver(JSON.stringify({ state: "peer", app: this.app }));
  }

  send(text) {
    if (this._closed) return;
    this._queue.push(text);
    if (!this._running) {
      this._running = true;
      queueMicrotask(() => this._run());
    }
  }

  close(code = 1000) {
    if (this._closed) return;
    this._closed = true;
    this._db.close();
    this._store.free();
    this._release();
    const cb = this.onclose;
    if (cb) setTimeout(() => cb({ code }), 0);
  }

  _deliver(text) {
    if (this.onmessage && !this._closed) this.onmessage({ data: text });
  }

  /** Runs what arrived together, commits it as one transaction, answers. */
  async _run() {
    while (this._queue.length && !this._closed) {
      const batch = this._queue.splice(0);
      const answers = [];
      const chunks = [];
      for (const text of batch) {
        const answer = this._store.request(text, Date.now());
        const w = this._store.takeWrites();
        answers.push({ answer, wrote: w.length > 0 });
        if (w.length) chunks.push(w);
      }
      if (chunks.length) {
        const total = chunks.reduce((n, c) => n + c.length, 0);
        const frames = new Uint8Array(total);
        let at = 0;
        for (const c of chunks) {
          frames.set(c, at);
          at += c.length;
        }
        try {
          await commit(this._db, this._names, frames);
        } catch (e) {
          if (this._closed) return;
          this._store.takeEvents(); // never delivered: their writes are not on disk
          for (const a of answers) {
            if (!a.wrote) this._deliver(a.answer);
            else this._deliver(commitError(JSON.parse(a.answer).id, e));
          }
          // Memory is ahead of the disk: reopen from IndexedDB. Requests
          // queued meanwhile never ran; the client fails them (`disconnected`).
          this.close(CLOSE_REOPEN);
          return;
        }
      }
      if (this._closed) return; // closed while committing: nobody to answer
      for (const a of answers) this._deliver(a.answer);
      const events = this._store.takeEvents();
      if (events) for (const line of events.split("\n")) if (line) this._deliver(line);
    }
    this._running = false;
  }
}
