// masq-relay.js — the page's sockets to the relay, for masq-peer.js: the
// device's own connection (kept open, reconnected with backoff) and the
// short-lived connections pairing opens. They only carry bytes: every frame
// is made and read by the Rust core (crates/masq-web: the relay's
// challenge, the proof, presence, sealed envelopes), and every frame it
// makes is sent only after the writes taken before it are committed.

/** First reconnect delay after losing the relay; doubles up to RECONNECT_MAX_MS (as natively). */
export const RECONNECT_MIN_MS = 100;
/** Longest reconnect delay. */
export const RECONNECT_MAX_MS = 5000;
/** How often the sync engine's timers run (handshake resends, busy peers, the 30 s resync). */
export const SYNC_TICK_MS = 1000;
/** An inviter keeps its pairing socket open this long after its answer left, so the relay hands it on. */
export const PAIR_LINGER_MS = 200;

/** Splits the core's length-prefixed frames (u32 LE length, bytes) into views. */
export function splitFrames(bytes) {
  const out = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  while (at + 4 <= bytes.length) {
    const len = view.getUint32(at, true);
    at += 4;
    out.push(bytes.subarray(at, at + len));
    at += len;
  }
  return out;
}

/** The relay URLs of a (maybe comma-separated, for a relay cluster) setting, in order of preference. */
export function relayUrls(setting) {
  return String(setting || "")
    .split(",")
    .map((u) => u.trim())
    .filter((u) => u.startsWith("ws://") || u.startsWith("wss://"));
}

/**
 * What this device is called on the user's other devices until they rename
 * it: the app and the browser, e.g. "notes on Chromium".
 */
export function defaultDeviceName(app) {
  let browser = "a browser";
  const brands = (navigator.userAgentData && navigator.userAgentData.brands) || [];
  const named = brands.map((b) => b.brand).find((b) => !/not.a.brand/i.test(b) && b !== "Chromium") ||
    brands.map((b) => b.brand).find((b) => !/not.a.brand/i.test(b));
  if (named) browser = named;
  else {
    const ua = navigator.userAgent || "";
    const m = ua.match(/(Firefox|Edg|OPR|Chrome|Chromium|Safari)\/[\d.]+/);
    if (m) browser = { Edg: "Edge", OPR: "Opera", Chrome: "Chrome" }[m[1]] || m[1];
  }
  return `${app} on ${browser}`;
}

/**
 * The device's connection to the relay: opened when asked, reopened with
 * backoff whenever it drops, until stopped. `handlers`: onOpen(conn),
 * onFrame(bytes), onClose() — onClose follows every onOpen exactly once;
 * `conn` numbers the sockets, so frames made for one are never sent on the
 * next (see `send`). The backoff starts over only once the relay accepted
 * the device (`accepted`), not when a socket merely opens.
 */
export class RelaySocket {
  constructor(handlers) {
    this._h = handlers;
    this._urls = [];
    this._next = 0;
    this._ws = null;
    this._open = false;
    this._timer = null;
    this._delay = RECONNECT_MIN_MS;
    this._stopped = true;
    /** The number of the current socket. */
    this._conn = 0;
  }

  /** Connects to `setting` (kept across reconnects); a new setting reconnects. */
  start(setting) {
    const urls = relayUrls(setting);
    const same = this._urls.join(",") === urls.join(",");
    this._urls = urls;
    this._stopped = false;
    if (same && (this._ws || this._timer)) return;
    this._drop();
    this._delay = RECONNECT_MIN_MS;
    this._connect();
  }

  /** Whether the socket is open (frames may be sent). */
  get isOpen() {
    return this._open;
  }

  /**
   * Sends one binary frame on socket `conn` (its onOpen's number), if that
   * socket is still the open one (a frame lost here is as one the relay
   * dropped).
   */
  send(bytes, conn) {
    if (this._open && conn === this._conn) this._ws.send(bytes);
  }

  /** The relay accepted the device on this socket: the next reconnect is quick again. */
  accepted() {
    this._delay = RECONNECT_MIN_MS;
    this._next = 0; // the preferred relay first, next time too
  }

  /** Closes the socket and stops reconnecting. */
  stop() {
    this._stopped = true;
    this._drop();
  }

  /** Closes this socket (e.g. after the relay broke the protocol); it reconnects. */
  restart() {
    if (this._ws) this._ws.close(4000);
  }

  _drop() {
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close(1000);
    }
    if (this._open) {
      this._open = false;
      this._h.onClose();
    }
  }

  _connect() {
    this._timer = null;
    if (this._stopped || !this._urls.length) return;
    const url = this._urls[this._next++ % this._urls.length];
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this._retry();
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    const conn = ++this._conn;
    ws.onopen = () => {
      this._open = true;
      this._h.onOpen(conn);
    };
    ws.onmessage = (ev) => {
      if (ev.data instanceof ArrayBuffer) this._h.onFrame(new Uint8Array(ev.data));
    };
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      if (this._open) {
        this._open = false;
        this._h.onClose();
      }
      this._retry();
    };
  }

  _retry() {
    if (this._stopped) return;
    this._timer = setTimeout(() => this._connect(), this._delay);
    this._delay = Math.min(this._delay * 2, RECONNECT_MAX_MS);
  }
}

/**
 * One pairing's socket: opened once, closed when the pairing ends.
 * `handlers`: onFrame(bytes), onClose().
 */
export function pairingSocket(url, handlers) {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const queued = [];
  ws.onopen = () => {
    for (const b of queued.splice(0)) ws.send(b);
  };
  ws.onmessage = (ev) => {
    if (ev.data instanceof ArrayBuffer) handlers.onFrame(new Uint8Array(ev.data));
  };
  ws.onclose = () => handlers.onClose();
  return {
    send(bytes) {
      if (ws.readyState === WebSocket.OPEN) ws.send(bytes);
      else if (ws.readyState === WebSocket.CONNECTING) queued.push(bytes);
    },
    close() {
      ws.onclose = null;
      ws.close(1000);
    },
  };
}
