//! Admin operations: apps, devices, pairing, status, and the manager page's
//! credentials. The JSON builders here are also what the CLI prints when it
//! opens the data directory itself, so the answers are the same with and
//! without a running store.
//!
//! The admin token never leaves the data directory's `store.json` (mode 0600):
//! `masq manager` asks the daemon for a single-use login code
//! (`admin.login_code`) and puts that in the link it prints or hands to the
//! browser; the page connects with it once, trades it for a session
//! (`admin.session`) kept in its tab's `sessionStorage`, and removes it from
//! the address bar. A code seen in a process list or in browser history is
//! useless once redeemed or after [`LOGIN_CODE_TTL`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{registry, Shared};
use crate::api::{ApiError, Request, Response};
use crate::error::Result;
use crate::store::Store;
use crate::sync::core::{StoreHost, SyncCore};
use crate::sync::pairing::{self, CodeCheck, Confirm, Inviter};
use crate::sync::peers;
use crate::sync::EngineStatus;
use masq_core::device::ops::{self as device_ops, LinkState};

/// Every manager login code starts with this, so a used or expired one gets
/// its own error ("open the link `masq manager` prints now").
pub const LOGIN_CODE_PREFIX: &str = "login-";
/// How long an unredeemed login code stays valid: long enough to copy a printed
/// link into a browser, short enough that a code glimpsed in a process list or
/// in scrollback is soon useless (redeeming it also ends it).
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(120);
/// Most unredeemed login codes kept; past this the oldest is forgotten, so
/// asking for codes in a loop cannot grow memory.
pub const MAX_LOGIN_CODES: usize = 16;
/// Most manager sessions kept for this run; past this the oldest is forgotten
/// (its page asks the user to open a fresh link). Far above the tabs a person
/// opens; bounds memory should a script mint sessions in a loop.
pub const MAX_ADMIN_SESSIONS: usize = 64;

/// Most pairings waiting for their user's answer at once. A person pairs one
/// device at a time; the bound keeps an admin script in a loop from growing
/// memory (each pairing also holds a relay connection until it ends).
pub const MAX_PAIRINGS_AWAITING_ANSWER: usize = 16;

/// The pairings whose code is out and whose user has not answered, by the
/// connection that started them and that request's id: `pair.confirm` on
/// that connection delivers the answer.
#[derive(Debug, Default)]
pub struct PairAnswers {
    waiting: Mutex<Vec<PairAnswer>>,
}

#[derive(Debug)]
struct PairAnswer {
    /// The `pair.invite` / `pair.join` request's id.
    id: u64,
    /// Its connection's outgoing channel (identifies the connection).
    conn: mpsc::Sender<Message>,
    /// Where the answer goes.
    answer: tokio::sync::oneshot::Sender<bool>,
}

impl PairAnswers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PairAnswer>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers the answer to pairing `id` of the connection `conn`.
    fn answer(&self, id: u64, conn: &mpsc::Sender<Message>, yes: bool) -> bool {
        let mut w = self.lock();
        match w
            .iter()
            .position(|p| p.id == id && p.conn.same_channel(conn))
        {
            Some(i) => w.swap_remove(i).answer.send(yes).is_ok(),
            None => false,
        }
    }

    /// The connection `conn` closed: its pairings waiting for an answer get
    /// a no (the user who was asked has gone), so they end now and tell the
    /// other device, instead of waiting for the invite to expire.
    pub fn connection_closed(&self, conn: &mpsc::Sender<Message>) {
        let mut w = self.lock();
        let mut i = 0;
        while i < w.len() {
            if w[i].conn.same_channel(conn) {
                let _ = w.swap_remove(i).answer.send(false);
            } else {
                i += 1;
            }
        }
    }

    /// Drops pairing `id` of `conn`, and any whose pairing ended.
    fn forget(&self, id: u64, conn: &mpsc::Sender<Message>) {
        let ours = |p: &PairAnswer| p.id == id && p.conn.same_channel(conn);
        self.lock().retain(|p| !ours(p) && !p.answer.is_closed());
    }
}

/// How a pairing started by request `id` on the connection `out` asks its
/// user: it sends the code as a `pair_code` message and waits for
/// `pair.confirm` (a closed connection is a no). With `yes` the caller
/// compares the codes itself: the message still goes, and the answer is yes.
fn confirm_over(
    shared: &std::sync::Arc<Shared>,
    id: u64,
    out: &mpsc::Sender<Message>,
    yes: bool,
) -> Confirm {
    let (shared, out) = (shared.clone(), out.clone());
    Box::new(move |check: CodeCheck| {
        Box::pin(async move {
            let mut pair_code = serde_json::to_value(&check).unwrap_or_default();
            if yes {
                // Shown, not asked: the caller must not answer.
                pair_code["answered"] = Json::Bool(true);
            }
            let text =
                serde_json::to_string(&Response::PairCode { id, pair_code }).unwrap_or_default();
            if yes {
                let _ = out.send(Message::text(text)).await;
                return true;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            {
                let mut w = shared.pair_answers.lock();
                w.retain(|p| !p.answer.is_closed());
                if w.len() >= MAX_PAIRINGS_AWAITING_ANSWER {
                    return false;
                }
                w.push(PairAnswer {
                    id,
                    conn: out.clone(),
                    answer: tx,
                });
            }
            let yes = out.send(Message::text(text)).await.is_ok()
                && tokio::select! {
                    a = rx => a.unwrap_or(false),
                    _ = out.closed() => false,
                };
            shared.pair_answers.forget(id, &out);
            yes
        })
    })
}

/// Whether `token` has the shape of a login code.
pub fn is_login_code(token: &str) -> bool {
    token.starts_with(LOGIN_CODE_PREFIX)
}

/// The manager's single-use login codes and the sessions pages trade them for
/// (in memory only: a restart of the store ends them, like the admin token).
#[derive(Debug, Default)]
pub struct AdminCredentials {
    inner: Mutex<Creds>,
}

#[derive(Debug, Default)]
struct Creds {
    /// Unredeemed codes and when they were made.
    codes: VecDeque<(String, Instant)>,
    /// Live sessions, oldest first.
    sessions: VecDeque<String>,
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl AdminCredentials {
    /// A new single-use login code.
    pub fn new_code(&self) -> String {
        let code = format!(
            "{LOGIN_CODE_PREFIX}{}",
            hex::encode(*crate::crypto::random_bytes::<32>())
        );
        if let Ok(mut c) = self.inner.lock() {
            c.codes.retain(|(_, made)| made.elapsed() < LOGIN_CODE_TTL);
            while c.codes.len() >= MAX_LOGIN_CODES {
                c.codes.pop_front();
            }
            c.codes.push_back((code.clone(), Instant::now()));
        }
        code
    }

    /// Whether `code` is a live login code; it is used up either way.
    pub fn redeem_code(&self, code: &str) -> bool {
        let Ok(mut c) = self.inner.lock() else {
            return false;
        };
        let mut found = None;
        for (i, (known, _)) in c.codes.iter().enumerate() {
            if ct_eq(known, code) {
                found = Some(i);
            }
        }
        match found.and_then(|i| c.codes.remove(i)) {
            Some((_, made)) => made.elapsed() < LOGIN_CODE_TTL,
            None => false,
        }
    }

    /// A new session credential (a token for this run of the store).
    pub fn new_session(&self) -> String {
        let session = hex::encode(*crate::crypto::random_bytes::<32>());
        if let Ok(mut c) = self.inner.lock() {
            while c.sessions.len() >= MAX_ADMIN_SESSIONS {
                c.sessions.pop_front();
            }
            c.sessions.push_back(session.clone());
        }
        session
    }

    /// Whether `token` is a live session.
    pub fn is_session(&self, token: &str) -> bool {
        let Ok(c) = self.inner.lock() else {
            return false;
        };
        c.sessions
            .iter()
            .fold(false, |hit, s| hit | ct_eq(s, token))
    }
}

/// Relay, devices, and documents each device has not acknowledged yet.
pub fn status_json(store: &Store, engine: Option<&EngineStatus>) -> Result<Json> {
    let db = store.db();
    let me = peers::load_or_create_identity(db)?;
    let core = SyncCore::new(store.clone());
    let prefs = core.local_prefs().clone();
    let mut list = Vec::new();
    for (id, rec) in peers::peers(db)? {
        // Apps off (or a pause) leave documents out: nothing of them is owed.
        let pending: Vec<String> = core
            .unacknowledged(&id)?
            .into_iter()
            .map(|(a, d)| format!("{a}/{d}"))
            .collect();
        let apps_off: Vec<&String> = prefs
            .off
            .iter()
            .filter(|(d, _)| *d == id)
            .map(|(_, a)| a)
            .collect();
        list.push(json!({
            "device": id.to_string(), "name": rec.name, "last_seen": rec.last_seen,
            "online": engine.map(|e| e.online.contains(&id.to_string())),
            "session": peers::session_bytes(db, &id)?.is_some(),
            "unacknowledged_docs": pending.len(), "unacknowledged": pending,
            "apps_off": apps_off,
        }));
    }
    Ok(json!({
        "device": me.device_id().to_string(),
        "fingerprint": me.device_id().fingerprint(),
        "relay": peers::relay_url(db)?,
        "daemon": engine.is_some(),
        "sync_paused": prefs.paused,
        "engine": engine,
        "peers": list,
    }))
}

/// The apps the sync preferences are about: every app with data here,
/// every registered one (approved origins, native apps), and any turned off
/// already — sorted.
pub fn sync_apps(store: &Store) -> Result<Vec<String>> {
    let db = store.db();
    let mut apps: Vec<String> = store.apps()?;
    apps.extend(registry::natives(db)?.into_iter().map(|r| r.name));
    apps.extend(
        registry::origins(db)?
            .into_iter()
            .filter(|o| o.state == registry::OriginState::Approved)
            .map(|o| o.app),
    );
    apps.extend(peers::local_prefs(db)?.off.into_iter().map(|(_, a)| a));
    apps.sort();
    apps.dedup();
    Ok(apps)
}

/// This store's sync preferences (pause; per app × device on or off), and
/// what each device said it takes from this store, when it said so:
/// `{"paused", "relay", "relay_connected", "apps", "devices": [{"device",
/// "fingerprint", "name", "online", "syncing", "apps": {APP: on}, "remote":
/// {"paused", "off", "only"} | null}]}`.
pub fn sync_json(store: &Store, engine: Option<&EngineStatus>) -> Result<Json> {
    let db = store.db();
    let local = peers::local_prefs(db)?;
    let apps = sync_apps(store)?;
    let mut devices = Vec::new();
    for (id, rec) in peers::peers(db)? {
        let hex = id.to_string();
        let on: serde_json::Map<String, Json> = apps
            .iter()
            .map(|a| (a.clone(), Json::Bool(local.app_on(&id, a))))
            .collect();
        let remote = engine.and_then(|e| e.peer_prefs.iter().find(|p| p.device == hex));
        devices.push(json!({
            "device": hex,
            "fingerprint": id.fingerprint(),
            "name": rec.name,
            "online": engine.map(|e| e.online.contains(&hex)),
            "syncing": engine.map(|e| e.syncing.contains(&hex)),
            "apps": on,
            "remote": remote,
        }));
    }
    Ok(json!({
        "paused": local.paused,
        "relay": peers::relay_url(db)?,
        "relay_connected": engine.map(|e| e.relay_connected),
        "apps": apps,
        "devices": devices,
    }))
}

/// `sync.status` for `app`: whether it syncs, and with which devices
/// (`{"app", "paused", "devices": [{"name", "on", "takes"}]}`; `takes`:
/// whether the device said it takes the app, `null` until it said so in
/// its current session). The same for a store's apps and for a native app
/// in peer mode. Deliberately without device ids and presence: any
/// approved app may ask, and it must not learn when each of the user's
/// devices is online (`devices.list` and `status` are the admin's).
pub fn sync_status_json(store: &Store, app: &str, engine: Option<&EngineStatus>) -> Result<Json> {
    let db = store.db();
    let local = peers::local_prefs(db)?;
    let mut devices = Vec::new();
    for (id, rec) in peers::peers(db)? {
        let hex = id.to_string();
        let takes = engine
            .and_then(|e| e.peer_prefs.iter().find(|p| p.device == hex))
            .map(|r| {
                !r.paused
                    && !r.off.iter().any(|a| a == app)
                    && r.only.as_ref().is_none_or(|o| o.iter().any(|a| a == app))
            });
        devices.push(json!({
            "name": rec.name,
            "on": local.app_on(&id, app),
            "takes": takes,
        }));
    }
    Ok(json!({ "app": app, "paused": local.paused, "devices": devices }))
}

/// `sync.status` on an app's connection.
pub(crate) async fn sync_status(
    shared: &std::sync::Arc<Shared>,
    app: &str,
) -> std::result::Result<Json, ApiError> {
    let engine = engine_status(shared).await;
    let (store, app) = (shared.store.clone(), app.to_string());
    tokio::task::spawn_blocking(move || sync_status_json(&store, &app, engine.as_ref()))
        .await
        .map_err(|e| ApiError::new("internal", e.to_string()))?
        .map_err(ApiError::from)
}

/// Registered origins and native apps.
pub fn apps_json(store: &Store) -> Result<Json> {
    let db = store.db();
    let natives: Vec<Json> = registry::natives(db)?
        .into_iter()
        .map(|r| json!({"name": r.name, "since": r.since}))
        .collect();
    Ok(json!({
        "origins": registry::origins(db)?,
        "native": natives,
        "namespaces": store.apps()?,
    }))
}

/// Most keys [`app_data_json`] counts per bucket; past it the count says `more`.
pub const MAX_COUNTED_KEYS: usize = 100_000;

/// One app's documents (with heads), KV buckets (with key counts) and, per
/// paired device, the app's documents that device has not acknowledged yet.
pub fn app_data_json(store: &Store, name: &str, online: Option<&[String]>) -> Result<Json> {
    let app = store.app(name)?;
    let docs = app.docs();
    let mut doc_list = Vec::new();
    for id in docs.list()? {
        let heads = docs.heads(&id)?;
        doc_list.push(json!({
            "doc": id.to_string(),
            "heads": crate::doc::heads_hex(&heads),
        }));
    }
    let mut buckets: Vec<String> = store
        .db()
        .doc_ids(name)?
        .into_iter()
        .filter_map(|d| crate::doc::DocId::parse_any(&d).ok())
        .filter_map(|d| crate::kv::bucket_of_shard(&d).map(str::to_string))
        .collect();
    buckets.sort();
    buckets.dedup();
    let mut bucket_list = Vec::new();
    for b in buckets {
        let (keys, more) = app.bucket(&b)?.count(MAX_COUNTED_KEYS)?;
        bucket_list.push(json!({ "bucket": b, "keys": keys, "more": more }));
    }
    let core = SyncCore::new(store.clone());
    let prefs = core.local_prefs().clone();
    let mut devices = Vec::new();
    for (id, rec) in peers::peers(store.db())? {
        let pending: Vec<String> = core
            .unacknowledged(&id)?
            .into_iter()
            .filter(|(a, _)| a == name)
            .map(|(_, d)| d.to_string())
            .collect();
        devices.push(json!({
            "device": id.to_string(),
            "name": rec.name,
            "online": online.map(|o| o.contains(&id.to_string())),
            // Off (or paused): nothing of the app is owed to that device.
            "sync_on": !prefs.paused && prefs.app_on(&id, name),
            "unacknowledged": pending,
        }));
    }
    Ok(json!({ "app": name, "docs": doc_list, "buckets": bucket_list, "devices": devices }))
}

/// Runs one of the core's device operations (`masq_core::device::ops`,
/// shared with a page in peer mode) on a blocking thread, over the store as
/// the device's host.
async fn device_op(
    store: &Store,
    f: impl FnOnce(&StoreHost, &crate::crypto::DeviceKeypair) -> std::result::Result<Json, ApiError>
        + Send
        + 'static,
) -> std::result::Result<Json, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let kp = peers::load_or_create_identity(store.db()).map_err(ApiError::from)?;
        f(&StoreHost::new(store), &kp)
    })
    .await
    .map_err(|e| ApiError::new("internal", e.to_string()))?
}

/// Runs an admin request (blocking parts off the async threads). `pair.invite`
/// answers at once and sends a `paired` message on `out` when the joiner comes.
/// An admin operation run on a blocking thread against the store.
type BlockingOp = Box<dyn FnOnce(&Store) -> Result<Json> + Send>;

pub(crate) async fn handle(
    shared: &std::sync::Arc<Shared>,
    id: u64,
    req: Request,
    out: &mpsc::Sender<Message>,
) -> std::result::Result<Json, ApiError> {
    let store = shared.store.clone();
    let blocking = |f: BlockingOp| {
        let store = store.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&store))
                .await
                .map_err(|e| ApiError::new("internal", e.to_string()))?
                .map_err(ApiError::from)
        }
    };
    match req {
        Request::AppsList {} => blocking(Box::new(apps_json)).await,
        Request::AppsData { name } => {
            let online = engine_status(shared).await.map(|s| s.online);
            blocking(Box::new(move |s| {
                app_data_json(s, &name, online.as_deref())
            }))
            .await
        }
        Request::AppsAdd { name } => {
            let r = blocking(Box::new(move |s| {
                Ok(json!({ "token": registry::add_native(s.db(), &name)? }))
            }))
            .await;
            shared.registry_changed();
            r
        }
        Request::AppsApprove { origin, app } => {
            let r = blocking(Box::new(move |s| {
                Ok(serde_json::to_value(registry::approve(
                    s.db(),
                    &origin,
                    app.as_deref(),
                )?)?)
            }))
            .await;
            shared.registry_changed();
            r
        }
        Request::AppsDeny { origin } => {
            let r = blocking(Box::new(move |s| {
                Ok(serde_json::to_value(registry::deny(s.db(), &origin)?)?)
            }))
            .await;
            shared.registry_changed();
            r
        }
        Request::AppsRevoke { who } => {
            let r = blocking(Box::new(move |s| {
                registry::revoke(s.db(), &who)?;
                Ok(Json::Null)
            }))
            .await;
            shared.registry_changed();
            r
        }
        Request::DevicesList {} => {
            let status = engine_status(shared).await.unwrap_or_default();
            device_op(&store, move |host, kp| {
                device_ops::devices_list(host, kp, |id| {
                    let id = id.to_string();
                    LinkState {
                        online: status.online.contains(&id),
                        syncing: status.syncing.contains(&id),
                    }
                })
            })
            .await
        }
        Request::DevicesRemove { device } => {
            let r = device_op(&store, move |host, kp| {
                let id = device_ops::remove(host, kp.device_id(), &device, peers::now())?;
                Ok(json!({ "removed": id.to_string() }))
            })
            .await;
            let _ = shared.ensure_engine().await;
            r
        }
        Request::DevicesName { name } => {
            device_op(&store, move |host, _| {
                device_ops::set_name(host, &name)?;
                Ok(Json::Null)
            })
            .await
        }
        Request::Status {} => {
            let status = engine_status(shared).await;
            blocking(Box::new(move |s| status_json(s, status.as_ref()))).await
        }
        Request::PairInvite { relay, yes } => {
            let relay = match relay.or(peers::relay_url(store.db()).map_err(ApiError::from)?) {
                Some(r) => r,
                None => return Err(ApiError::new("no_relay", "no relay configured: give one")),
            };
            let inviter = Inviter::start(store.clone(), &relay)
                .await
                .map_err(ApiError::from)?;
            let invite = inviter.invite();
            let answer = json!({
                "invite": invite.to_uri(),
                "qr": invite.qr_text(),
                "qr_svg": invite.qr_svg(),
            });
            let confirm = confirm_over(shared, id, out, yes);
            let (task_shared, out) = (shared.clone(), out.clone());
            shared.spawn(async move {
                let shared = task_shared;
                let paired = match inviter.wait(confirm).await {
                    Ok(p) => {
                        let _ = shared.ensure_engine().await;
                        serde_json::to_value(p).unwrap_or_default()
                    }
                    Err(e) => json!({ "error": ApiError::from(e) }),
                };
                let _ = out
                    .send(Message::text(
                        serde_json::to_string(&Response::Paired { id, paired }).unwrap_or_default(),
                    ))
                    .await;
            });
            Ok(answer)
        }
        Request::PairJoin { invite, yes } => {
            // Runs until both users answered: the connection runs this
            // request as a task of its own, so its `pair.confirm` is heard.
            let confirm = confirm_over(shared, id, out, yes);
            let paired = pairing::join(&store, &invite, confirm)
                .await
                .map_err(ApiError::from)?;
            let _ = shared.ensure_engine().await;
            serde_json::to_value(paired).map_err(|e| ApiError::new("internal", e.to_string()))
        }
        Request::PairConfirm { pairing, yes } => {
            if shared.pair_answers.answer(pairing, out, yes) {
                Ok(Json::Null)
            } else {
                Err(ApiError::new(
                    "not_found",
                    format!("no pairing {pairing} of this connection waits for an answer"),
                ))
            }
        }
        Request::SyncShow {} => {
            let status = engine_status(shared).await;
            blocking(Box::new(move |s| sync_json(s, status.as_ref()))).await
        }
        Request::SyncSet { app, device, on } => {
            device_op(&store, move |host, _| {
                crate::store::validate_name("app", &app).map_err(ApiError::from)?;
                let id = device_ops::find_peer(host, &device)?;
                peers::set_app_sync(host.store().db(), &id, &app, on).map_err(ApiError::from)?;
                Ok(Json::Null)
            })
            .await?;
            sync_changed(shared).await
        }
        Request::SyncPause {} | Request::SyncResume {} => {
            let paused = matches!(req, Request::SyncPause {});
            blocking(Box::new(move |s| {
                peers::set_paused(s.db(), paused)?;
                Ok(Json::Null)
            }))
            .await?;
            sync_changed(shared).await
        }
        Request::AdminLoginCode {} => Ok(json!({ "code": shared.admin_credentials.new_code() })),
        Request::AdminSession {} => {
            Ok(json!({ "session": shared.admin_credentials.new_session() }))
        }
        other => Err(ApiError::new(
            "bad_request",
            format!(
                "{} is not an admin operation",
                crate::api::execute::op_name(&other)
            ),
        )),
    }
}

async fn engine_status(shared: &Shared) -> Option<EngineStatus> {
    shared.engine.status().await
}

/// After a change of the sync preferences (persisted): the engine follows
/// them, and the answer is the new state (as `sync.show`; the engine's
/// view of the devices as it was just before).
async fn sync_changed(shared: &std::sync::Arc<Shared>) -> std::result::Result<Json, ApiError> {
    shared.engine.prefs_changed().await;
    let status = engine_status(shared).await;
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || sync_json(&store, status.as_ref()))
        .await
        .map_err(|e| ApiError::new("internal", e.to_string()))?
        .map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_codes_are_single_use_and_sessions_bounded() {
        let creds = AdminCredentials::default();
        let code = creds.new_code();
        assert!(is_login_code(&code));
        assert!(creds.redeem_code(&code));
        assert!(!creds.redeem_code(&code), "a code works once");
        assert!(!creds.redeem_code("login-00"));
        let codes: Vec<String> = (0..MAX_LOGIN_CODES + 1).map(|_| creds.new_code()).collect();
        assert!(!creds.redeem_code(&codes[0]), "the oldest is forgotten");
        assert!(creds.redeem_code(&codes[MAX_LOGIN_CODES]));
        let first = creds.new_session();
        assert!(creds.is_session(&first));
        assert!(!creds.is_session(&code));
        for _ in 0..MAX_ADMIN_SESSIONS {
            creds.new_session();
        }
        assert!(!creds.is_session(&first), "the oldest session is forgotten");
    }
}
