//! What a device remembers about itself and its peers, in the store's `meta`
//! keyspace: its identity key, its name, paired devices, ratchet session state
//! and per-(peer, document) Automerge sync state.
//!
//! Keys (prefix → value):
//! - `identity` → the 32 secret bytes of this device's X25519 key
//! - `name` → this device's human name
//! - `peer/<id 32 bytes>` → [`PeerRecord`] as JSON
//! - `removed/<id>` → removal time (removed devices are not re-added by introductions)
//! - `session/<id>` → serialized Double Ratchet session
//! - `syncstate/<id><app>\0<doc>` → `automerge::sync::State::encode()` bytes
//!
//! Architecture invariant: storage of records only — no networking, no crypto
//! beyond loading/creating the key pair.

use serde::{Deserialize, Serialize};
use x25519_dalek::PublicKey;

use crate::error::{Error, Result};
use crate::storage::Db;
use masq_core::crypto::{DeviceId, DeviceKeypair};

const IDENTITY: &[u8] = b"identity";
const NAME: &[u8] = b"name";
const PEER: &[u8] = b"peer/";
const REMOVED: &[u8] = b"removed/";
const SESSION: &[u8] = b"session/";
const SYNCSTATE: &[u8] = b"syncstate/";

/// A paired device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerRecord {
    /// Its X25519 static public key (hex).
    pub public_key: String,
    /// Its human name.
    pub name: String,
    /// When it was paired (seconds since the epoch).
    pub added: i64,
    /// When it was last seen online (seconds since the epoch, 0 never).
    pub last_seen: i64,
}

impl PeerRecord {
    /// The public key as bytes.
    pub fn public(&self) -> Result<PublicKey> {
        let b =
            hex::decode(&self.public_key).map_err(|e| Error::Storage(format!("peer key: {e}")))?;
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| Error::Storage("peer key length".into()))?;
        Ok(PublicKey::from(arr))
    }

    /// Its DeviceId.
    pub fn device_id(&self) -> Result<DeviceId> {
        Ok(DeviceId::from_public(&self.public()?))
    }
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// This device's identity: loaded, or generated and stored (fsynced) on first use.
pub fn load_or_create_identity(db: &Db) -> Result<DeviceKeypair> {
    if let Some(v) = db.meta.get(IDENTITY)? {
        let arr: [u8; 32] = v
            .as_ref()
            .try_into()
            .map_err(|_| Error::Storage("identity key has wrong length".into()))?;
        return Ok(DeviceKeypair::from_secret_bytes(arr));
    }
    let kp = DeviceKeypair::generate();
    let mut b = db.batch();
    b.insert(&db.meta, IDENTITY, kp.secret_bytes().to_vec());
    db.commit(b)?;
    db.persist_all()?;
    Ok(kp)
}

/// This device's name (default: the host name, else "masq device").
pub fn device_name(db: &Db) -> Result<String> {
    if let Some(v) = db.meta.get(NAME)? {
        return Ok(String::from_utf8_lossy(&v).to_string());
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(if host.is_empty() {
        "masq device".into()
    } else {
        host
    })
}

/// Sets this device's name.
pub fn set_device_name(db: &Db, name: &str) -> Result<()> {
    let mut b = db.batch();
    b.insert(&db.meta, NAME, name.as_bytes());
    db.commit(b)
}

/// All paired devices.
pub fn peers(db: &Db) -> Result<Vec<(DeviceId, PeerRecord)>> {
    let mut out = Vec::new();
    for g in db.meta.prefix(PEER) {
        let (k, v) = g.into_inner()?;
        let Ok(id) = <[u8; 32]>::try_from(&k[PEER.len()..]) else {
            continue;
        };
        let rec: PeerRecord = serde_json::from_slice(&v)?;
        out.push((DeviceId(id), rec));
    }
    Ok(out)
}

/// One paired device.
pub fn peer(db: &Db, id: &DeviceId) -> Result<Option<PeerRecord>> {
    match db.meta.get(key(PEER, id.as_bytes()))? {
        None => Ok(None),
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
    }
}

/// Whether a device was removed from this user's set.
pub fn is_removed(db: &Db, id: &DeviceId) -> Result<bool> {
    Ok(db.meta.get(key(REMOVED, id.as_bytes()))?.is_some())
}

/// Stages adding (or updating) a peer.
pub fn stage_peer(
    db: &Db,
    batch: &mut fjall::OwnedWriteBatch,
    public: &PublicKey,
    name: &str,
) -> Result<DeviceId> {
    let id = DeviceId::from_public(public);
    let rec = PeerRecord {
        public_key: hex::encode(public.as_bytes()),
        name: name.to_string(),
        added: now(),
        last_seen: 0,
    };
    batch.insert(
        &db.meta,
        key(PEER, id.as_bytes()),
        serde_json::to_vec(&rec)?,
    );
    batch.remove(&db.meta, key(REMOVED, id.as_bytes()));
    Ok(id)
}

/// Updates a peer's name or last-seen time.
pub fn update_peer(db: &Db, id: &DeviceId, f: impl FnOnce(&mut PeerRecord)) -> Result<()> {
    if let Some(mut rec) = peer(db, id)? {
        f(&mut rec);
        let mut b = db.batch();
        b.insert(
            &db.meta,
            key(PEER, id.as_bytes()),
            serde_json::to_vec(&rec)?,
        );
        db.commit(b)?;
    }
    Ok(())
}

/// Stages removal of a peer: its record, session and sync states go; a removal mark stays.
pub fn stage_remove_peer(db: &Db, batch: &mut fjall::OwnedWriteBatch, id: &DeviceId) -> Result<()> {
    batch.remove(&db.meta, key(PEER, id.as_bytes()));
    batch.remove(&db.meta, key(SESSION, id.as_bytes()));
    batch.insert(
        &db.meta,
        key(REMOVED, id.as_bytes()),
        now().to_be_bytes().to_vec(),
    );
    for g in db.meta.prefix(key(SYNCSTATE, id.as_bytes())) {
        batch.remove(&db.meta, g.key()?);
    }
    Ok(())
}

/// The stored ratchet session with a peer, as bytes.
pub fn session_bytes(db: &Db, id: &DeviceId) -> Result<Option<Vec<u8>>> {
    Ok(db
        .meta
        .get(key(SESSION, id.as_bytes()))?
        .map(|v| v.to_vec()))
}

/// Stages the ratchet session with a peer.
pub fn stage_session(db: &Db, batch: &mut fjall::OwnedWriteBatch, id: &DeviceId, bytes: &[u8]) {
    batch.insert(&db.meta, key(SESSION, id.as_bytes()), bytes);
}

fn syncstate_key(id: &DeviceId, app: &str, doc: &str) -> Vec<u8> {
    let mut k = key(SYNCSTATE, id.as_bytes());
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(doc.as_bytes());
    k
}

/// The persisted sync state for (peer, app, doc).
pub fn sync_state(db: &Db, id: &DeviceId, app: &str, doc: &str) -> Result<Option<Vec<u8>>> {
    Ok(db
        .meta
        .get(syncstate_key(id, app, doc))?
        .map(|v| v.to_vec()))
}

/// Stages the sync state for (peer, app, doc).
pub fn stage_sync_state(
    db: &Db,
    batch: &mut fjall::OwnedWriteBatch,
    id: &DeviceId,
    app: &str,
    doc: &str,
    bytes: &[u8],
) {
    batch.insert(&db.meta, syncstate_key(id, app, doc), bytes);
}

const NOTE: &[u8] = b"note/";
const RELAY_URL: &[u8] = b"relay_url";

/// Queues a payload (encoded [`SyncPayload`](super::wire::SyncPayload)) for a
/// peer, sent the next time a session with it is ready: introductions of new
/// devices and removal notices survive restarts this way.
pub fn stage_note(db: &Db, batch: &mut fjall::OwnedWriteBatch, target: &DeviceId, payload: &[u8]) {
    let mut k = key(NOTE, target.as_bytes());
    k.extend_from_slice(&masq_core::crypto::random_bytes::<8>()[..]);
    batch.insert(&db.meta, k, payload);
}

/// Notes queued for a peer: (key, payload).
pub fn notes(db: &Db, target: &DeviceId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for g in db.meta.prefix(key(NOTE, target.as_bytes())) {
        let (k, v) = g.into_inner()?;
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

/// Stages removal of a sent note.
pub fn stage_remove_note(db: &Db, batch: &mut fjall::OwnedWriteBatch, note_key: &[u8]) {
    batch.remove(&db.meta, note_key.to_vec());
}

/// The relay this device uses (set when pairing or by `--relay`).
pub fn relay_url(db: &Db) -> Result<Option<String>> {
    Ok(db
        .meta
        .get(RELAY_URL)?
        .map(|v| String::from_utf8_lossy(&v).to_string()))
}

/// Remembers the relay URL.
pub fn set_relay_url(db: &Db, url: &str) -> Result<()> {
    let mut b = db.batch();
    b.insert(&db.meta, RELAY_URL, url.as_bytes());
    db.commit(b)
}
