//! Admin operations: apps, devices, pairing, status. The JSON builders here are
//! also what the CLI prints when it opens the data directory itself, so the
//! answers are the same with and without a running store.

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{registry, Shared};
use crate::api::{ApiError, Request, Response};
use crate::crypto::DeviceId;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::sync::core::SyncCore;
use crate::sync::engine::EngineStatus;
use crate::sync::pairing::{self, Inviter};
use crate::sync::peers;

/// This device and its paired devices: `{"me": {...}, "devices": [...]}`.
pub fn devices_json(store: &Store, online: &[String]) -> Result<Json> {
    let db = store.db();
    let me = peers::load_or_create_identity(db)?;
    let mut list = Vec::new();
    for (id, rec) in peers::peers(db)? {
        list.push(json!({
            "device": id.to_string(),
            "fingerprint": id.fingerprint(),
            "name": rec.name,
            "online": online.contains(&id.to_string()),
            "last_seen": rec.last_seen,
            "safety_code": crate::crypto::safety_code(&me.public(), &rec.public()?),
        }));
    }
    Ok(json!({
        "me": {
            "device": me.device_id().to_string(),
            "fingerprint": me.device_id().fingerprint(),
            "name": peers::device_name(db)?,
        },
        "devices": list,
    }))
}

/// Relay, devices, and documents each device has not acknowledged yet.
pub fn status_json(store: &Store, engine: Option<&EngineStatus>) -> Result<Json> {
    let db = store.db();
    let me = peers::load_or_create_identity(db)?;
    let core = SyncCore::new(store.clone());
    let mut list = Vec::new();
    for (id, rec) in peers::peers(db)? {
        let pending: Vec<String> = core
            .unacknowledged(&id)?
            .into_iter()
            .map(|(a, d)| format!("{a}/{d}"))
            .collect();
        list.push(json!({
            "device": id.to_string(), "name": rec.name, "last_seen": rec.last_seen,
            "online": engine.map(|e| e.online.contains(&id.to_string())),
            "session": peers::session_bytes(db, &id)?.is_some(),
            "unacknowledged_docs": pending.len(), "unacknowledged": pending,
        }));
    }
    Ok(json!({
        "device": me.device_id().to_string(),
        "fingerprint": me.device_id().fingerprint(),
        "relay": peers::relay_url(db)?,
        "daemon": engine.is_some(),
        "engine": engine,
        "peers": list,
    }))
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
            "unacknowledged": pending,
        }));
    }
    Ok(json!({ "app": name, "docs": doc_list, "buckets": bucket_list, "devices": devices }))
}

/// Finds a paired device by hex id or fingerprint prefix.
pub fn find_device(store: &Store, needle: &str) -> Result<DeviceId> {
    let needle = needle.to_lowercase();
    let matches: Vec<DeviceId> = peers::peers(store.db())?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| id.to_string().starts_with(&needle) || id.fingerprint().starts_with(&needle))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::BadOp(format!("no paired device matches {needle:?}"))),
        _ => Err(Error::BadOp(format!(
            "{needle:?} matches several devices; give more of the id"
        ))),
    }
}

/// Runs an admin request (blocking parts off the async threads). `pair.invite`
/// answers at once and sends a `paired` message on `out` when the joiner comes.
pub(crate) async fn handle(
    shared: &std::sync::Arc<Shared>,
    id: u64,
    req: Request,
    out: &mpsc::Sender<Message>,
) -> std::result::Result<Json, ApiError> {
    let store = shared.store.clone();
    let blocking = |f: Box<dyn FnOnce(&Store) -> Result<Json> + Send>| {
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
            let online = engine_status(shared)
                .await
                .map(|s| s.online)
                .unwrap_or_default();
            blocking(Box::new(move |s| devices_json(s, &online))).await
        }
        Request::DevicesRemove { device } => {
            let r = blocking(Box::new(move |s| {
                let id = find_device(s, &device)?;
                pairing::remove_device(s, &id)?;
                Ok(json!({ "removed": id.to_string() }))
            }))
            .await;
            let _ = shared.ensure_engine().await;
            r
        }
        Request::DevicesName { name } => {
            blocking(Box::new(move |s| {
                peers::set_device_name(s.db(), &name)?;
                Ok(Json::Null)
            }))
            .await
        }
        Request::Status {} => {
            let status = engine_status(shared).await;
            blocking(Box::new(move |s| status_json(s, status.as_ref()))).await
        }
        Request::PairInvite { relay } => {
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
            let (shared, out) = (shared.clone(), out.clone());
            tokio::spawn(async move {
                let paired = match inviter.wait().await {
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
        Request::PairJoin { invite } => {
            let paired = pairing::join(&store, &invite)
                .await
                .map_err(ApiError::from)?;
            let _ = shared.ensure_engine().await;
            serde_json::to_value(paired).map_err(|e| ApiError::new("internal", e.to_string()))
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
