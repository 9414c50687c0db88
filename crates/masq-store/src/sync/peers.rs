//! What a device remembers about itself and its peers, read from and written
//! to the store's `meta` keyspace under the core's layout
//! ([`masq_core::layout::meta`], which lists the keys): its identity key, its
//! name, paired devices, ratchet session state, per-(peer, document)
//! Automerge sync state, and its sync choices (pause, apps off per device).
//!
//! Architecture invariant: storage of records only — no networking, no crypto
//! beyond loading/creating the key pair.

use x25519_dalek::PublicKey;

use crate::error::{Error, Result};
use crate::storage::Db;
use masq_core::crypto::{DeviceId, DeviceKeypair};
pub use masq_core::layout::meta::PeerRecord;
use masq_core::layout::meta::{
    self as layout, note_prefix, peer_key, peer_of_key, removed_key, session_key, syncstate_key,
    IDENTITY, NAME, PEER, RELAY_URL, SYNC_OFF, SYNC_PAUSED,
};
use masq_core::records::WriteSet;
pub use masq_core::sync::membership::Group;
pub use masq_core::sync::prefs::LocalPrefs;

impl From<layout::BadRecord> for Error {
    fn from(e: layout::BadRecord) -> Self {
        Error::Storage(e.to_string())
    }
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

/// This device's name (default: [`default_device_name`]).
pub fn device_name(db: &Db) -> Result<String> {
    if let Some(v) = db.meta.get(NAME)? {
        return Ok(String::from_utf8_lossy(&v).to_string());
    }
    Ok(default_device_name())
}

/// The name a store shows until it is given one: the host name, else
/// "masq device".
pub fn default_device_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        "masq device".into()
    } else {
        host
    }
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
        let Some(id) = peer_of_key(&k) else {
            continue;
        };
        let rec: PeerRecord = serde_json::from_slice(&v)?;
        out.push((id, rec));
    }
    Ok(out)
}

/// One paired device.
pub fn peer(db: &Db, id: &DeviceId) -> Result<Option<PeerRecord>> {
    match db.meta.get(peer_key(id))? {
        None => Ok(None),
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
    }
}

/// Whether a device was removed from this user's set.
pub fn is_removed(db: &Db, id: &DeviceId) -> Result<bool> {
    Ok(db.meta.get(removed_key(id))?.is_some())
}

/// Stages adding (or updating) a peer brought in by `added_by` (this
/// device itself when the two paired here).
pub fn stage_peer(
    db: &Db,
    batch: &mut fjall::OwnedWriteBatch,
    public: &PublicKey,
    name: &str,
    added_by: &DeviceId,
) -> Result<DeviceId> {
    let mut writes = WriteSet::new();
    let id = layout::stage_peer(&mut writes, public, name, now(), added_by)?;
    db.stage(batch, writes)?;
    Ok(id)
}

/// Updates a peer's name or last-seen time.
pub fn update_peer(db: &Db, id: &DeviceId, f: impl FnOnce(&mut PeerRecord)) -> Result<()> {
    if let Some(mut rec) = peer(db, id)? {
        f(&mut rec);
        let mut writes = WriteSet::new();
        layout::stage_peer_record(&mut writes, id, &rec)?;
        let mut b = db.batch();
        db.stage(&mut b, writes)?;
        db.commit(b)?;
    }
    Ok(())
}

/// The device group as this store records it (members and removal marks),
/// for the core's membership decisions.
pub fn group(db: &Db, me: DeviceId) -> Result<Group> {
    let mut records = Vec::new();
    for prefix in Group::PREFIXES {
        for g in db.meta.prefix(prefix) {
            let (k, v) = g.into_inner()?;
            records.push((k.to_vec(), v.to_vec()));
        }
    }
    Ok(Group::from_records(me, records))
}

/// The stored ratchet session with a peer, as bytes.
pub fn session_bytes(db: &Db, id: &DeviceId) -> Result<Option<Vec<u8>>> {
    Ok(db.meta.get(session_key(id))?.map(|v| v.to_vec()))
}

/// The peer's init mark (0 if none): see `layout::meta::INIT_MARK`.
pub fn init_mark(db: &Db, id: &DeviceId) -> Result<u64> {
    Ok(db
        .meta
        .get(layout::init_mark_key(id))?
        .map_or(0, |v| layout::decode_init_mark(&v)))
}

/// Stages the peer's init mark.
pub fn stage_init_mark(db: &Db, batch: &mut fjall::OwnedWriteBatch, id: &DeviceId, mark: u64) {
    batch.insert(&db.meta, layout::init_mark_key(id), mark.to_be_bytes());
}

/// Stages the ratchet session with a peer.
pub fn stage_session(db: &Db, batch: &mut fjall::OwnedWriteBatch, id: &DeviceId, bytes: &[u8]) {
    batch.insert(&db.meta, session_key(id), bytes);
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

/// Queues a payload (encoded [`SyncPayload`](super::wire::SyncPayload)) for a
/// peer, sent the next time a session with it is ready: introductions of new
/// devices and removal notices survive restarts this way.
pub fn stage_note(
    db: &Db,
    batch: &mut fjall::OwnedWriteBatch,
    target: &DeviceId,
    payload: &[u8],
) -> Result<()> {
    let mut writes = WriteSet::new();
    layout::stage_note(&mut writes, target, payload);
    db.stage(batch, writes)
}

/// Notes queued for a peer: (key, payload).
pub fn notes(db: &Db, target: &DeviceId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for g in db.meta.prefix(note_prefix(target)) {
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

/// This store's sync choices (pause; apps off per device).
pub fn local_prefs(db: &Db) -> Result<LocalPrefs> {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if let Some(v) = db.meta.get(SYNC_PAUSED)? {
        records.push((SYNC_PAUSED.to_vec(), v.to_vec()));
    }
    for g in db.meta.prefix(SYNC_OFF) {
        let (k, v) = g.into_inner()?;
        records.push((k.to_vec(), v.to_vec()));
    }
    Ok(LocalPrefs::from_records(
        records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    ))
}

/// Turns `app` on or off towards the paired device `id`, durably.
pub fn set_app_sync(db: &Db, id: &DeviceId, app: &str, on: bool) -> Result<()> {
    let mut writes = WriteSet::new();
    layout::stage_app_sync(&mut writes, id, app, on);
    let mut b = db.batch();
    db.stage(&mut b, writes)?;
    db.commit(b)
}

/// Pauses or resumes all of this store's sync, durably.
pub fn set_paused(db: &Db, paused: bool) -> Result<()> {
    let mut writes = WriteSet::new();
    layout::stage_paused(&mut writes, paused);
    let mut b = db.batch();
    db.stage(&mut b, writes)?;
    db.commit(b)
}
