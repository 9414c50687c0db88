//! What a device reads about itself from its `meta` records, once for every
//! shell: its identity, name and relay, its paired devices and group, the
//! sessions and init marks of its links, the notes queued for a peer, the
//! persisted sync state of a (peer, document), and its sync choices.
//!
//! Every reader takes the shell's [`Records`]; the keys are
//! [`layout::meta`]'s. A record that does not decode reads as absent where
//! a default is safe (a session that does not decode: handshake again), and
//! as an error where it is not (a paired device's record).
//!
//! Architecture invariant: reads only. What to write goes through
//! `layout::meta`'s `stage_*` functions into a `WriteSet`.

use crate::crypto::{DeviceId, DeviceKeypair};
use crate::layout::meta::{
    self as layout, note_prefix, peer_key, peer_of_key, session_key, syncstate_key, PeerRecord,
    IDENTITY, NAME, PEER, RELAY_URL, SYNC_OFF, SYNC_PAUSED,
};
use crate::records::{Record, Records, Table};
use crate::sync::membership::Group;
use crate::sync::prefs::LocalPrefs;

/// A `meta` record read failed, or held bytes that do not decode.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The shell's storage failed.
    #[error("{0}")]
    Storage(E),
    /// The record is malformed.
    #[error("stored {0} is malformed")]
    Malformed(&'static str),
}

fn get<R: Records>(r: &R, key: &[u8]) -> Result<Option<Vec<u8>>, R::Error> {
    r.get(Table::Meta, key)
}

fn scan<R: Records>(r: &R, prefix: &[u8]) -> Result<Vec<Record>, R::Error> {
    r.scan_prefix(Table::Meta, prefix)
}

/// This device's key pair, if it has one yet.
pub fn identity<R: Records>(r: &R) -> Result<Option<DeviceKeypair>, ReadError<R::Error>> {
    match get(r, IDENTITY).map_err(ReadError::Storage)? {
        None => Ok(None),
        Some(v) => {
            let secret: [u8; 32] = v
                .as_slice()
                .try_into()
                .map_err(|_| ReadError::Malformed("identity key"))?;
            Ok(Some(DeviceKeypair::from_secret_bytes(secret)))
        }
    }
}

/// This device's name, if it was given one.
pub fn device_name<R: Records>(r: &R) -> Result<Option<String>, R::Error> {
    Ok(get(r, NAME)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// The relay this device uses, once it paired (or was told one).
pub fn relay_url<R: Records>(r: &R) -> Result<Option<String>, R::Error> {
    Ok(get(r, RELAY_URL)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Every paired device, in id order.
pub fn peers<R: Records>(r: &R) -> Result<Vec<(DeviceId, PeerRecord)>, ReadError<R::Error>> {
    let mut out = Vec::new();
    for (k, v) in scan(r, PEER).map_err(ReadError::Storage)? {
        let Some(id) = peer_of_key(&k) else { continue };
        let rec: PeerRecord =
            serde_json::from_slice(&v).map_err(|_| ReadError::Malformed("peer record"))?;
        out.push((id, rec));
    }
    Ok(out)
}

/// One paired device's record.
pub fn peer<R: Records>(r: &R, id: &DeviceId) -> Result<Option<PeerRecord>, ReadError<R::Error>> {
    match get(r, &peer_key(id)).map_err(ReadError::Storage)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|_| ReadError::Malformed("peer record")),
    }
}

/// The device group (members and removal marks), for the core's
/// membership decisions.
pub fn group<R: Records>(r: &R, me: DeviceId) -> Result<Group, R::Error> {
    let mut records = Vec::new();
    for prefix in Group::PREFIXES {
        records.extend(scan(r, prefix)?);
    }
    Ok(Group::from_records(me, records))
}

/// The stored ratchet session with `id`, as bytes.
pub fn session_bytes<R: Records>(r: &R, id: &DeviceId) -> Result<Option<Vec<u8>>, R::Error> {
    get(r, &session_key(id))
}

/// `id`'s init mark (0 if none): see [`layout::INIT_MARK`].
pub fn init_mark<R: Records>(r: &R, id: &DeviceId) -> Result<u64, R::Error> {
    Ok(get(r, &layout::init_mark_key(id))?.map_or(0, |v| layout::decode_init_mark(&v)))
}

/// The persisted Automerge sync state of (peer, app, doc).
pub fn sync_state<R: Records>(
    r: &R,
    id: &DeviceId,
    app: &str,
    doc: &str,
) -> Result<Option<Vec<u8>>, R::Error> {
    get(r, &syncstate_key(id, app, doc))
}

/// The notes queued for `target`: (key, encoded payload), oldest first.
pub fn notes<R: Records>(r: &R, target: &DeviceId) -> Result<Vec<Record>, R::Error> {
    scan(r, &note_prefix(target))
}

/// This device's own sync choices (pause; apps off per device).
pub fn local_prefs<R: Records>(r: &R) -> Result<LocalPrefs, R::Error> {
    let mut records = scan(r, SYNC_OFF)?;
    if let Some(v) = get(r, SYNC_PAUSED)? {
        records.push((SYNC_PAUSED.to_vec(), v));
    }
    Ok(LocalPrefs::from_records(
        records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    ))
}
