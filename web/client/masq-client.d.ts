// Types of masq-client.js (served by the store at /masq-client.d.ts, and
// shipped in the package folder web/client/).
// The protocol behind them: docs/protocol.md, "App protocol".

/** An error answered by the store or by the client; `code` is stable. */
export class MasqError extends Error {
  /** e.g. `not_found`, `not_approved`, `denied`, `disconnected`, `unreachable`, `too_large`, `quota_exceeded` (peer mode). */
  code: string;
}

/**
 * Where the connection stands. `pending`: the user has not approved this page
 * yet. `peer`: no store runs on this device; the page is its own store
 * (IndexedDB), and requests are served as in `ready`.
 */
export type State = "connecting" | "pending" | "ready" | "peer" | "denied" | "closed";

export interface ConnectOptions {
  /** The namespace a web page asks for (the user approves origin + app). */
  app?: string;
  /** A native app token or the store's admin token, instead of `app`. */
  token?: string;
  /** The store: `http://127.0.0.1:7070` or its `ws://…/ws` URL. Default: the store that served the module (127.0.0.1:7070 when the app serves it). */
  url?: string;
  /**
   * `auto` (default): the store if one answers within 1.5 s, else peer mode;
   * `store`: the store only; `peer`: the page's own store (needs `app`).
   */
  mode?: "auto" | "store" | "peer";
}

/** One change operation (JSON-Pointer paths). */
export type ChangeOp =
  | { op: "put"; path: string; value: unknown }
  | { op: "put_text"; path: string; value: string }
  | { op: "put_counter"; path: string; value: number }
  | { op: "delete"; path: string }
  | { op: "insert"; path: string; value: unknown }
  | { op: "splice"; path: string; index: number; delete?: number; insert?: string }
  | { op: "increment"; path: string; by?: number };

/** Where a change came from. */
export type Origin = { kind: "local" } | { kind: "remote"; device: string };

export type Event =
  | { type: "kv"; bucket: string; key: string; value: unknown | null; origin: Origin }
  | { type: "doc"; doc: string; heads: string[]; patches: unknown[]; origin: Origin }
  | { type: "doc_deleted"; doc: string; origin: Origin }
  /** Events were missed (or the connection was re-opened): re-read what you show. */
  | { type: "lagged"; missed: number | null };

export interface Subscription {
  /** Stops the events. */
  close(): Promise<void>;
  readonly closed: boolean;
}

export interface BucketOptions {
  bucket?: string;
}

export interface HistoryEntry {
  hash: string;
  actor: string;
  seq: number;
  time: number;
  message: string | null;
  deps: string[];
}

export interface Invite {
  /** The `masq:` URI to give the other device. */
  invite: string;
  /** The invite as a terminal QR code. */
  qr: string;
  /** The invite as an SVG QR code. */
  qr_svg: string;
  /** Resolves to the code to compare once the other device has joined. */
  code: Promise<PairCode>;
  /** The user's answer to the code (when no `confirm` option was given). */
  confirm(yes: boolean): Promise<null>;
  /** Resolves once both users said yes. */
  paired: Promise<PairedDevice>;
}

/** What the user compares with the other device's screen. */
export interface PairCode {
  /** Six digits; both devices show the same unless someone is in the middle. */
  code: string;
  device_id: string;
  fingerprint: string;
  /** The other device's name, in its own words. */
  name: string;
}

export interface PairOptions {
  /** Shows the code and resolves to the user's answer: does the other device show the same? */
  confirm?: (code: PairCode) => boolean | Promise<boolean>;
  /** Confirms without asking: only for callers that compare the two codes themselves. */
  yes?: boolean;
}

export interface PairedDevice {
  device_id: string;
  fingerprint: string;
  name: string;
  /** The pairing code both users confirmed. */
  safety_code: string;
  /** How many other devices of the user this pairing introduced. */
  also_learned: number;
}

export interface Device {
  device: string;
  fingerprint: string;
  name: string;
  online: boolean;
  /** Peer mode: a session is up and documents flow. */
  syncing?: boolean;
  last_seen: number;
  safety_code: string;
}

/** Whether an app syncs with each paired device (`sync.status`). */
export interface SyncStatus {
  app: string;
  /** This device paused all sync. */
  paused: boolean;
  /** Per paired device (no ids or presence: those are the store owner's). */
  devices: {
    name: string;
    /** The app is on towards this device here. */
    on: boolean;
    /** The device said it takes this app (null: not said in its current session). */
    takes: boolean | null;
  }[];
}

export interface Masq {
  readonly state: State;
  /** The namespace this connection acts in (`null` for an admin connection). */
  readonly app: string | null;
  /** Calls `cb` on every state change; returns a function that stops it. */
  onState(cb: (state: State) => void): () => void;
  /** Resolves when the store serves this app; rejects if it refuses it. */
  ready(): Promise<void>;
  /** A raw request; waits until ready; resolves to the answer's `ok`. */
  request(op: string, args?: Record<string, unknown>): Promise<any>;
  /** Opens a pairing invite (peer mode, or the store's admin). Same as `pair.invite`. */
  pairInvite(relay?: string, opts?: PairOptions): Promise<Invite>;
  /** Joins an invite (peer mode, or the store's admin). Same as `pair.join`. */
  pairJoin(invite: string, opts: PairOptions): Promise<PairedDevice>;
  /**
   * This device's pairing and devices. In peer mode the page is its own
   * device and serves these; with a store they need its admin rights.
   */
  pair: {
    /** An invite through `relay` (ws:// or wss://; default: this device's relay). */
    invite(relay?: string, opts?: PairOptions): Promise<Invite>;
    /**
     * Joins the device that made `invite` (a `masq:` URI) once both users
     * said yes to the code (`opts.confirm` asks this one). Errors:
     * `bad_request` (no `confirm` and no `yes`), `bad_invite`,
     * `pairing_failed`, `pairing_declined`.
     */
    join(invite: string, opts: PairOptions): Promise<PairedDevice>;
    /** This device and its paired devices. */
    devices(): Promise<{ me: { device: string; fingerprint: string; name: string }; devices: Device[] }>;
    /** Removes a paired device (hex id or fingerprint prefix) everywhere. */
    remove(device: string): Promise<{ removed: string }>;
    /** Renames this device, as the others show it. */
    rename(name: string): Promise<null>;
    /** The relay, sync counters and each paired device's state. */
    status(): Promise<any>;
  };
  /** Whether this app syncs, and with which devices (read only). */
  sync: {
    status(): Promise<SyncStatus>;
  };
  kv: {
    /** The value, or undefined if absent. */
    get(key: string, opts?: BucketOptions): Promise<unknown | undefined>;
    /** Resolves once the write is durable. */
    put(key: string, value: unknown, opts?: BucketOptions): Promise<null>;
    putMany(entries: [string, unknown][], opts?: BucketOptions): Promise<null>;
    delete(key: string, opts?: BucketOptions): Promise<boolean>;
    list(opts?: BucketOptions & { prefix?: string; startAfter?: string; limit?: number }): Promise<{ key: string; value: unknown }[]>;
    conflicts(key: string, opts?: BucketOptions): Promise<unknown[]>;
    watch(cb: (event: Event) => void, opts?: BucketOptions & { prefix?: string }): Promise<Subscription>;
  };
  docs: {
    /** Creates a document; resolves to its id. */
    create(ops?: ChangeOp[], message?: string): Promise<string>;
    /** The document as JSON (at past heads if given). */
    read(doc: string, opts?: { at?: string[] }): Promise<any>;
    /** Applies the operations atomically; resolves to the new heads. */
    change(doc: string, ops: ChangeOp[], message?: string): Promise<string[]>;
    heads(doc: string): Promise<string[]>;
    history(doc: string): Promise<HistoryEntry[]>;
    list(): Promise<string[]>;
    delete(doc: string): Promise<void>;
    /** Events of one document, or of every document of the app (`null`). */
    subscribe(doc: string | null, cb: (event: Event) => void): Promise<Subscription>;
  };
  /** Closes the connection for good. */
  close(): void;
}

/** Connects; resolves once the store said `pending` or `ready`. */
export function connect(opts: ConnectOptions): Promise<Masq>;
