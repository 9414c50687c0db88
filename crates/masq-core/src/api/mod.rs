//! The app protocol: what local apps (and the CLI) say to a store, as JSON.
//!
//! Every request is one JSON object `{"id": N, "op": "kv.get", ...}`; every
//! answer is `{"id": N, "ok": RESULT}` or `{"id": N, "error": {"code", "message"}}`;
//! pushed events are `{"sub": S, "event": EVENT}` and connection state changes
//! are `{"state": "pending" | "ready" | "denied" | "revoked", "app": NAME}`.
//! `docs/protocol.md` ("App protocol") specifies every op with its limits.
//!
//! [`execute`] runs a data request against one app's namespace of any store
//! that implements [`DataApi`]: the native store, peer-mode clients, the CLI
//! and (M11) the browser shell all answer through it, so all behave the same.
//!
//! Architecture invariant: [`Request`], [`Response`] and [`ApiError`] are plain
//! data (serde); this module knows nothing of sockets, tokio, HTTP or where
//! documents are kept.

pub mod event;
pub mod execute;

pub use event::{Event, Origin};
pub use execute::{execute, op_name, DataApi, ListOptions, Outcome};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::doc::{ChangeOp, DocError};

/// Largest request or response text frame on the app WebSocket.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Live subscriptions (watch/subscribe) one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Requests one connection may have waiting for execution (pipelining depth);
/// past this the connection stops reading until answers go out.
pub const MAX_PIPELINED: usize = 1024;

/// One request. `op` names the operation; the other fields are its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Request {
    /// Value of a key: `ok` is the value; error `not_found` if absent.
    #[serde(rename = "kv.get")]
    KvGet {
        /// Bucket (default `default`).
        #[serde(default = "default_bucket")]
        bucket: String,
        /// Key.
        key: String,
    },
    /// Sets a key: `ok` is `null` once the write is durable.
    #[serde(rename = "kv.put")]
    KvPut {
        /// Bucket.
        #[serde(default = "default_bucket")]
        bucket: String,
        /// Key.
        key: String,
        /// JSON value.
        value: Json,
    },
    /// Sets many keys in one atomic, durable write.
    #[serde(rename = "kv.put_many")]
    KvPutMany {
        /// Bucket.
        #[serde(default = "default_bucket")]
        bucket: String,
        /// `[key, value]` pairs.
        entries: Vec<(String, Json)>,
    },
    /// Deletes a key: `ok` is `{"deleted": bool}`.
    #[serde(rename = "kv.delete")]
    KvDelete {
        /// Bucket.
        #[serde(default = "default_bucket")]
        bucket: String,
        /// Key.
        key: String,
    },
    /// Entries in key order: `ok` is `[{"key", "value"}]`.
    #[serde(rename = "kv.list")]
    KvList {
        /// Bucket.
        #[serde(default = "default_bucket")]
        bucket: String,
        /// Only keys with this prefix.
        #[serde(default)]
        prefix: String,
        /// Only keys after this one.
        #[serde(default)]
        start_after: Option<String>,
        /// At most this many (default 1000, at most 10000).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Every value kept for a key after concurrent writes, winner first.
    #[serde(rename = "kv.conflicts")]
    KvConflicts {
        /// Bucket.
        #[serde(default = "default_bucket")]
        bucket: String,
        /// Key.
        key: String,
    },
    /// Starts pushing `kv` events for keys with a prefix: `ok` is `{"sub": S}`.
    #[serde(rename = "kv.watch")]
    KvWatch {
        /// Bucket.
        #[serde(default = "default_bucket")]
        bucket: String,
        /// Key prefix (default: every key).
        #[serde(default)]
        prefix: String,
    },
    /// Creates a document: `ok` is `{"doc": ID}`.
    #[serde(rename = "doc.create")]
    DocCreate {
        /// Initial operations.
        #[serde(default)]
        ops: Vec<ChangeOp>,
        /// Commit message.
        #[serde(default)]
        message: Option<String>,
    },
    /// A document as JSON (at past heads if `at` is given).
    #[serde(rename = "doc.get")]
    DocGet {
        /// Document id.
        doc: String,
        /// Heads (hex change hashes) to read at.
        #[serde(default)]
        at: Option<Vec<String>>,
    },
    /// Applies operations atomically: `ok` is `{"heads": [...]}`.
    #[serde(rename = "doc.change")]
    DocChange {
        /// Document id.
        doc: String,
        /// Operations.
        ops: Vec<ChangeOp>,
        /// Commit message.
        #[serde(default)]
        message: Option<String>,
    },
    /// Current heads: `ok` is `{"heads": [...]}`.
    #[serde(rename = "doc.heads")]
    DocHeads {
        /// Document id.
        doc: String,
    },
    /// Change history: `ok` is a list of history entries.
    #[serde(rename = "doc.history")]
    DocHistory {
        /// Document id.
        doc: String,
    },
    /// The app's documents: `ok` is a list of ids.
    #[serde(rename = "doc.list")]
    DocList {},
    /// Deletes a document (the tombstone syncs).
    #[serde(rename = "doc.delete")]
    DocDelete {
        /// Document id.
        doc: String,
    },
    /// The Automerge file: `ok` is `{"base64": ...}`.
    #[serde(rename = "doc.export")]
    DocExport {
        /// Document id.
        doc: String,
    },
    /// Imports an Automerge file: `ok` is `{"doc": ID}`.
    #[serde(rename = "doc.import")]
    DocImport {
        /// The file, base64 (standard alphabet, padded).
        base64: String,
    },
    /// Starts pushing `doc` events for one document (or all): `ok` is `{"sub": S}`.
    #[serde(rename = "doc.subscribe")]
    DocSubscribe {
        /// Document id, or none for every document of the app.
        #[serde(default)]
        doc: Option<String>,
    },
    /// Stops a watch or subscription.
    #[serde(rename = "unsubscribe")]
    Unsubscribe {
        /// The `sub` a watch or subscribe returned.
        sub: u64,
    },
    /// Admin only: registered apps and origins.
    #[serde(rename = "apps.list")]
    AppsList {},
    /// Admin only: one app's documents, KV buckets and sync state per device.
    #[serde(rename = "apps.data")]
    AppsData {
        /// App name (its namespace).
        name: String,
    },
    /// Admin only: registers a native app and returns its token (shown once).
    #[serde(rename = "apps.add")]
    AppsAdd {
        /// App name (its namespace).
        name: String,
    },
    /// Admin only: lets a browser origin use the store as app `app`
    /// (default: the app name it asked for).
    #[serde(rename = "apps.approve")]
    AppsApprove {
        /// `scheme://host[:port]`.
        origin: String,
        /// Namespace to grant.
        #[serde(default)]
        app: Option<String>,
    },
    /// Admin only: refuses a pending origin.
    #[serde(rename = "apps.deny")]
    AppsDeny {
        /// The origin.
        origin: String,
    },
    /// Admin only: revokes an approved origin or a native app (by name); its
    /// connections are closed.
    #[serde(rename = "apps.revoke")]
    AppsRevoke {
        /// Origin, or native app name.
        who: String,
    },
    /// Admin only: this device and its paired devices.
    #[serde(rename = "devices.list")]
    DevicesList {},
    /// Admin only: removes a paired device everywhere.
    #[serde(rename = "devices.remove")]
    DevicesRemove {
        /// Hex id or fingerprint prefix.
        device: String,
    },
    /// Admin only: sets this device's name.
    #[serde(rename = "devices.name")]
    DevicesName {
        /// The name.
        name: String,
    },
    /// Admin only: relay, devices online, unacknowledged documents.
    #[serde(rename = "status")]
    Status {},
    /// Admin only: makes an invite; `ok` is `{"invite", "qr", "qr_svg"}`.
    /// When the other device has joined, a `{"id", "pair_code": {"code",
    /// "device_id", "fingerprint", "name"}}` message asks for the user's
    /// answer (`pair.confirm`), and a `{"id", "paired": ...}` message ends it.
    #[serde(rename = "pair.invite")]
    PairInvite {
        /// Relay URL (default: the store's).
        #[serde(default)]
        relay: Option<String>,
        /// Confirm without asking: only for callers that compare the two
        /// codes themselves (scripts with `--yes`).
        #[serde(default)]
        yes: bool,
    },
    /// Admin only: joins the device that made `invite`. A `pair_code`
    /// message (as for `pair.invite`) asks for the user's answer; `ok` is the
    /// paired device, once both users said yes.
    #[serde(rename = "pair.join")]
    PairJoin {
        /// The `masq:` URI.
        invite: String,
        /// As for `pair.invite`.
        #[serde(default)]
        yes: bool,
    },
    /// Admin only: the user's answer to a pairing's code: `yes` when the
    /// other device shows the same code. `pairing` is the id of the
    /// `pair.invite` or `pair.join` request (on the same connection).
    #[serde(rename = "pair.confirm")]
    PairConfirm {
        /// The pairing request's id.
        pairing: u64,
        /// The user's answer.
        yes: bool,
    },
    /// Admin only: a single-use code for a manager link; `ok` is `{"code"}`.
    /// `masq manager` puts it in the link instead of the admin token.
    #[serde(rename = "admin.login_code")]
    AdminLoginCode {},
    /// Admin only: a session credential for the manager page; `ok` is
    /// `{"session"}`, accepted as a token for the rest of this store run.
    #[serde(rename = "admin.session")]
    AdminSession {},
    /// Admin only: this store's sync preferences (pause; per app × device
    /// on or off) and what each device said it takes.
    #[serde(rename = "sync.show")]
    SyncShow {},
    /// Admin only: turns `app` on or off towards `device`; `ok` is as for
    /// `sync.show`.
    #[serde(rename = "sync.set")]
    SyncSet {
        /// App name (its namespace). The envelope takes the JSON `app`
        /// first; [`parse_request`] hands it on.
        #[serde(default)]
        app: String,
        /// Hex id or fingerprint prefix of a paired device.
        device: String,
        /// On (what every app and device start as) or off.
        on: bool,
    },
    /// Admin only: pauses all of this store's sync (kept across restarts;
    /// the relay connection stays, so presence and pairing work).
    #[serde(rename = "sync.pause")]
    SyncPause {},
    /// Admin only: resumes sync; everything missed catches up.
    #[serde(rename = "sync.resume")]
    SyncResume {},
    /// Whether the asking app syncs, and with which devices (read only:
    /// the user decides in the store manager).
    #[serde(rename = "sync.status")]
    SyncStatus {},
}

fn default_bucket() -> String {
    "default".to_string()
}

impl Request {
    /// Whether only the admin (the store's owner) may send it.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Request::AppsList {}
                | Request::AppsData { .. }
                | Request::AppsAdd { .. }
                | Request::AppsApprove { .. }
                | Request::AppsDeny { .. }
                | Request::AppsRevoke { .. }
                | Request::DevicesList {}
                | Request::DevicesRemove { .. }
                | Request::DevicesName { .. }
                | Request::Status {}
                | Request::PairInvite { .. }
                | Request::PairJoin { .. }
                | Request::PairConfirm { .. }
                | Request::AdminLoginCode {}
                | Request::AdminSession {}
                | Request::SyncShow {}
                | Request::SyncSet { .. }
                | Request::SyncPause {}
                | Request::SyncResume {}
        )
    }
}

/// A request as it travels: its id, the app it is for (admin connections only;
/// an app connection is bound to its own namespace), and the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Chosen by the client; echoed in the answer.
    pub id: u64,
    /// Namespace, for admin connections (ignored for app connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// An error with a stable code (see `docs/protocol.md` for the list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Stable, machine-readable.
    pub code: String,
    /// One line for people.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl From<DocError> for ApiError {
    fn from(e: DocError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

/// Everything the store sends on an app connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    /// A successful answer.
    Ok {
        /// The request's id.
        id: u64,
        /// Its result.
        ok: Json,
    },
    /// A failed request (or, with id 0, a frame that did not parse).
    Err {
        /// The request's id (0 if it could not be read).
        id: u64,
        /// What went wrong.
        error: ApiError,
    },
    /// An event of a watch or subscription.
    Event {
        /// The subscription.
        sub: u64,
        /// The event.
        event: Event,
    },
    /// The connection's permission state changed (sent first on every connection).
    State {
        /// `pending` (waiting for the user's approval), `ready`, `denied` or `revoked`.
        state: ConnState,
        /// The namespace the connection acts in (none for admin).
        #[serde(default)]
        app: Option<String>,
    },
    /// A pairing started with `pair.invite` finished.
    Paired {
        /// The invite request's id.
        id: u64,
        /// The paired device (or an error).
        paired: Json,
    },
    /// A pairing's code is known: the user compares it with the other
    /// device's and answers with `pair.confirm`.
    PairCode {
        /// The `pair.invite` or `pair.join` request's id.
        id: u64,
        /// `{"code", "device_id", "fingerprint", "name"}`.
        pair_code: Json,
    },
}

/// Permission state of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// A browser origin the user has not approved yet: every request fails
    /// with `not_approved` until approval arrives (then `ready` is sent).
    Pending,
    /// Requests are served.
    Ready,
    /// The user refused this origin; the connection closes.
    Denied,
    /// The app's access was revoked; the connection closes.
    Revoked,
}

/// Most characters of an unknown `op` repeated in its error message.
pub const MAX_ECHOED_OP_CHARS: usize = 64;

/// Parses one request frame. A frame that is not a JSON object with a numeric
/// `id` yields an error for id 0; an unknown op or bad arguments yield an
/// error carrying the frame's id, so the client can match it.
pub fn parse_request(text: &str) -> Result<Envelope, (u64, ApiError)> {
    let value: Json = serde_json::from_str(text)
        .map_err(|e| (0, ApiError::new("bad_json", format!("not JSON: {e}"))))?;
    let id = value
        .get("id")
        .and_then(Json::as_u64)
        .ok_or_else(|| (0, ApiError::new("bad_request", "missing numeric \"id\"")))?;
    // Echoed in errors: cut, so an answer is never as large as the request.
    let op: String = value
        .get("op")
        .and_then(Json::as_str)
        .unwrap_or("")
        .chars()
        .take(MAX_ECHOED_OP_CHARS)
        .collect();
    let mut envelope = serde_json::from_value::<Envelope>(value).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown variant") || op.is_empty() {
            (
                id,
                ApiError::new("unknown_op", format!("unknown op {op:?}")),
            )
        } else {
            (id, ApiError::new("bad_request", format!("{op}: {msg}")))
        }
    })?;
    // `apps.approve`'s own `app` (the namespace to grant) has the same JSON
    // name as the envelope's, which takes it first when flattening: hand it
    // on, since an admin op has no namespace of its own.
    if let Request::AppsApprove {
        app: app @ None, ..
    } = &mut envelope.request
    {
        *app = envelope.app.take();
    }
    // The same for `sync.set`'s app.
    if let Request::SyncSet { app, .. } = &mut envelope.request {
        if app.is_empty() {
            *app = envelope.app.take().unwrap_or_default();
        }
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sync_set_keeps_the_app_it_names() {
        let e =
            parse_request(r#"{"id":1,"op":"sync.set","app":"photos","device":"ab12","on":false}"#)
                .unwrap();
        assert_eq!(
            e.request,
            Request::SyncSet {
                app: "photos".into(),
                device: "ab12".into(),
                on: false
            }
        );
        assert_eq!(e.app, None);
    }

    #[test]
    fn apps_approve_keeps_the_namespace_it_grants() {
        let e =
            parse_request(r#"{"id":1,"op":"apps.approve","origin":"http://a.test","app":"notes"}"#)
                .unwrap();
        assert_eq!(
            e.request,
            Request::AppsApprove {
                origin: "http://a.test".into(),
                app: Some("notes".into())
            }
        );
    }

    #[test]
    fn parses_requests_and_reports_bad_ones_with_their_id() {
        let e = parse_request(r#"{"id":7,"op":"kv.get","key":"a"}"#).unwrap();
        assert_eq!(
            e.request,
            Request::KvGet {
                bucket: "default".into(),
                key: "a".into()
            }
        );
        assert_eq!(parse_request("nope").unwrap_err().1.code, "bad_json");
        assert_eq!(parse_request(r#"{"op":"kv.get"}"#).unwrap_err().0, 0);
        let (id, err) = parse_request(r#"{"id":3,"op":"kv.fly"}"#).unwrap_err();
        assert_eq!((id, err.code.as_str()), (3, "unknown_op"));
        let (id, err) = parse_request(r#"{"id":4,"op":"kv.get","key":5}"#).unwrap_err();
        assert_eq!((id, err.code.as_str()), (4, "bad_request"));
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::Ok {
                id: 1,
                ok: serde_json::json!({"a": 1}),
            },
            Response::Err {
                id: 2,
                error: ApiError::new("not_found", "no key"),
            },
            Response::State {
                state: ConnState::Pending,
                app: Some("notes".into()),
            },
        ] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), r);
        }
    }
}
