//! What a device remembers about itself and its peers, in [`Table::Meta`]:
//! its identity key, its name, paired devices, ratchet sessions,
//! per-(peer, document) Automerge sync state, and notes queued for peers.
//!
//! Keys (prefix → value):
//! - `identity` → the 32 secret bytes of this device's X25519 key
//! - `name` → this device's human name
//! - `relay_url` → the relay this device uses
//! - `peer/<id 32 bytes>` → [`PeerRecord`] as JSON
//! - `removed/<id>` → [`RemovalMark`]: removal time, i64 BE seconds, then
//!   the remover's 32-byte id (absent in marks written before the
//!   membership log); removed devices are not re-added by introductions
//! - `session/<id>` → serialized Double Ratchet session
//! - `syncstate/<id><app>\0<doc>` → `automerge::sync::State::encode()` bytes
//! - `note/<id><8 random bytes>` → an encoded sync payload to send to `id`
//!   once a session with it is ready
//! - `sync_paused` → present (empty) while this store's sync is paused
//! - `sync_off/<id><app>` → present (empty) while `app` does not sync with
//!   `id` (every app syncs with every device unless one of these says so)
//!
//! Architecture invariant: keys and record encodings only; the caller passes
//! the time (seconds since the epoch) where a record holds one.

use serde::{Deserialize, Serialize};
use x25519_dalek::PublicKey;

use crate::crypto::DeviceId;
use crate::records::{Table, WriteSet};

/// Key of this device's secret key.
pub const IDENTITY: &[u8] = b"identity";
/// Key of this device's name.
pub const NAME: &[u8] = b"name";
/// Key of the relay URL.
pub const RELAY_URL: &[u8] = b"relay_url";
/// Prefix of paired devices.
pub const PEER: &[u8] = b"peer/";
/// Prefix of removal marks.
pub const REMOVED: &[u8] = b"removed/";
/// Prefix of ratchet sessions.
pub const SESSION: &[u8] = b"session/";
/// Prefix of init marks: per device, the highest stamp of its handshake
/// inits answered or seen losing the tie-break (8 bytes, big-endian); an
/// init stamped at or below is refused.
pub const INIT_MARK: &[u8] = b"initmark/";
/// Prefix of sync states.
pub const SYNCSTATE: &[u8] = b"syncstate/";
/// Prefix of queued notes.
pub const NOTE: &[u8] = b"note/";
/// Present while this store's sync is paused.
pub const SYNC_PAUSED: &[u8] = b"sync_paused";
/// Prefix of the (device, app) pairs that do not sync.
pub const SYNC_OFF: &[u8] = b"sync_off/";

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
    /// Hex id of the device that brought it into this store's group: this
    /// device itself when the two paired here, else the device whose
    /// introduction added it (`None`: paired before the membership log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_by: Option<String>,
}

/// A stored record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("stored {what} is malformed")]
pub struct BadRecord {
    /// Which record.
    pub what: &'static str,
}

impl PeerRecord {
    /// A record for a device paired now.
    pub fn new(public: &PublicKey, name: &str, now: i64, added_by: &DeviceId) -> Self {
        PeerRecord {
            public_key: hex::encode(public.as_bytes()),
            name: name.to_string(),
            added: now,
            last_seen: 0,
            added_by: Some(added_by.to_string()),
        }
    }

    /// The device that brought it in, when known.
    pub fn added_by(&self) -> Option<DeviceId> {
        DeviceId::parse(self.added_by.as_deref()?)
    }

    /// The public key as bytes.
    pub fn public(&self) -> Result<PublicKey, BadRecord> {
        let bad = BadRecord { what: "peer key" };
        let b = hex::decode(&self.public_key).map_err(|_| bad)?;
        let arr: [u8; 32] = b.try_into().map_err(|_| BadRecord { what: "peer key" })?;
        Ok(PublicKey::from(arr))
    }

    /// Its DeviceId.
    pub fn device_id(&self) -> Result<DeviceId, BadRecord> {
        Ok(DeviceId::from_public(&self.public()?))
    }
}

/// Why and when a device left the group: the value of `removed/<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalMark {
    /// When this store learned it (seconds since the epoch).
    pub at: i64,
    /// Who removed it (`None`: a mark from before the membership log).
    pub by: Option<DeviceId>,
}

impl RemovalMark {
    /// `at` (i64 BE) then `by` (32 bytes) when known.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.at.to_be_bytes().to_vec();
        if let Some(by) = &self.by {
            v.extend_from_slice(by.as_bytes());
        }
        v
    }

    /// Decodes a mark of 8 or 40 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, BadRecord> {
        let bad = || BadRecord {
            what: "removal mark",
        };
        let at = i64::from_be_bytes(b.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let by = match &b[8..] {
            [] => None,
            rest => Some(DeviceId(rest.try_into().map_err(|_| bad())?)),
        };
        Ok(RemovalMark { at, by })
    }
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

/// Key of a paired device's record.
pub fn peer_key(id: &DeviceId) -> Vec<u8> {
    key(PEER, id.as_bytes())
}

/// Key of a device's removal mark.
pub fn removed_key(id: &DeviceId) -> Vec<u8> {
    key(REMOVED, id.as_bytes())
}

/// Key of the ratchet session with a device.
pub fn session_key(id: &DeviceId) -> Vec<u8> {
    key(SESSION, id.as_bytes())
}

/// Key of a device's init mark.
pub fn init_mark_key(id: &DeviceId) -> Vec<u8> {
    key(INIT_MARK, id.as_bytes())
}

/// An init mark's value (0, refusing nothing older, if it does not
/// decode: the session's cache and archive still hold replays off).
pub fn decode_init_mark(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

/// Prefix of every sync state with a device.
pub fn syncstate_prefix(id: &DeviceId) -> Vec<u8> {
    key(SYNCSTATE, id.as_bytes())
}

/// Key of the sync state of (device, app, doc).
pub fn syncstate_key(id: &DeviceId, app: &str, doc: &str) -> Vec<u8> {
    let mut k = syncstate_prefix(id);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(doc.as_bytes());
    k
}

/// Prefix of the notes queued for a device.
pub fn note_prefix(id: &DeviceId) -> Vec<u8> {
    key(NOTE, id.as_bytes())
}

/// The prefix of the apps turned off towards `id`.
pub fn sync_off_prefix(id: &DeviceId) -> Vec<u8> {
    let mut k = SYNC_OFF.to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// The key saying `app` does not sync with `id`.
pub fn sync_off_key(id: &DeviceId, app: &str) -> Vec<u8> {
    let mut k = sync_off_prefix(id);
    k.extend_from_slice(app.as_bytes());
    k
}

/// The (device, app) a `sync_off/` key names (`None`: not such a key).
pub fn sync_off_of_key(k: &[u8]) -> Option<(DeviceId, String)> {
    let rest = k.strip_prefix(SYNC_OFF)?;
    if rest.len() <= 32 {
        return None;
    }
    let (id, app) = rest.split_at(32);
    let id = <[u8; 32]>::try_from(id).ok().map(DeviceId)?;
    Some((id, String::from_utf8(app.to_vec()).ok()?))
}

/// Stages whether `app` syncs with `id` (on: the default, no record).
pub fn stage_app_sync(writes: &mut WriteSet, id: &DeviceId, app: &str, on: bool) {
    if on {
        writes.remove(Table::Meta, sync_off_key(id, app));
    } else {
        writes.put(Table::Meta, sync_off_key(id, app), Vec::new());
    }
}

/// Stages pausing (or resuming) all of this store's sync.
pub fn stage_paused(writes: &mut WriteSet, paused: bool) {
    if paused {
        writes.put(Table::Meta, SYNC_PAUSED.to_vec(), Vec::new());
    } else {
        writes.remove(Table::Meta, SYNC_PAUSED.to_vec());
    }
}

/// The device a `removed/` mark's key names (`None`: not a removal key).
pub fn removed_of_key(k: &[u8]) -> Option<DeviceId> {
    let rest = k.strip_prefix(REMOVED)?;
    <[u8; 32]>::try_from(rest).ok().map(DeviceId)
}

/// The device a `peer/` record's key names (`None`: not a peer key).
pub fn peer_of_key(k: &[u8]) -> Option<DeviceId> {
    let rest = k.strip_prefix(PEER)?;
    <[u8; 32]>::try_from(rest).ok().map(DeviceId)
}

/// Stages adding (or updating) a peer brought in by `added_by` at `now`;
/// clears its removal mark (pairing again undoes a removal).
pub fn stage_peer(
    writes: &mut WriteSet,
    public: &PublicKey,
    name: &str,
    now: i64,
    added_by: &DeviceId,
) -> serde_json::Result<DeviceId> {
    let id = DeviceId::from_public(public);
    let rec = PeerRecord::new(public, name, now, added_by);
    writes.put(Table::Meta, peer_key(&id), serde_json::to_vec(&rec)?);
    writes.remove(Table::Meta, removed_key(&id));
    Ok(id)
}

/// Stages a changed peer record.
pub fn stage_peer_record(
    writes: &mut WriteSet,
    id: &DeviceId,
    rec: &PeerRecord,
) -> serde_json::Result<()> {
    writes.put(Table::Meta, peer_key(id), serde_json::to_vec(rec)?);
    Ok(())
}

/// Stages removal of a peer: its record, session, sync states and notes
/// go; a removal mark stays.
pub fn stage_remove_peer(writes: &mut WriteSet, id: &DeviceId, mark: RemovalMark) {
    writes.remove(Table::Meta, peer_key(id));
    writes.remove(Table::Meta, session_key(id));
    writes.remove(Table::Meta, init_mark_key(id));
    writes.put(Table::Meta, removed_key(id), mark.encode());
    writes.remove_prefix(Table::Meta, note_prefix(id));
    writes.remove_prefix(Table::Meta, syncstate_prefix(id));
    writes.remove_prefix(Table::Meta, sync_off_prefix(id));
}

/// Stages the ratchet session with a peer.
pub fn stage_session(writes: &mut WriteSet, id: &DeviceId, bytes: &[u8]) {
    writes.put(Table::Meta, session_key(id), bytes);
}

/// Stages a device's init mark (see [`INIT_MARK`]).
pub fn stage_init_mark(writes: &mut WriteSet, id: &DeviceId, mark: u64) {
    writes.put(Table::Meta, init_mark_key(id), mark.to_be_bytes());
}

/// Stages the sync state for (peer, app, doc).
pub fn stage_sync_state(writes: &mut WriteSet, id: &DeviceId, app: &str, doc: &str, bytes: &[u8]) {
    writes.put(Table::Meta, syncstate_key(id, app, doc), bytes);
}

/// Stages a note (an encoded sync payload) for `target`, under a fresh
/// random key so notes never replace each other.
pub fn stage_note(writes: &mut WriteSet, target: &DeviceId, payload: &[u8]) {
    let mut k = note_prefix(target);
    k.extend_from_slice(&crate::crypto::random_bytes::<8>()[..]);
    writes.put(Table::Meta, k, payload);
}

/// Stages removal of a sent note.
pub fn stage_remove_note(writes: &mut WriteSet, note_key: &[u8]) {
    writes.remove(Table::Meta, note_key.to_vec());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Write;

    #[test]
    fn keys_are_pinned_and_a_removal_drops_everything_of_the_peer() {
        let public = PublicKey::from([9u8; 32]);
        let mut w = WriteSet::new();
        let me = DeviceId([1; 32]);
        let id = stage_peer(&mut w, &public, "laptop", 100, &me).unwrap();
        assert_eq!(peer_of_key(&peer_key(&id)), Some(id));
        assert_eq!(&syncstate_key(&id, "a", "d")[..10], b"syncstate/");
        assert!(syncstate_key(&id, "a", "d").ends_with(b"a\0d"));
        let rec = PeerRecord::new(&public, "laptop", 100, &me);
        assert_eq!(rec.device_id().unwrap(), id);
        assert_eq!(rec.added_by(), Some(me));
        let mut w = WriteSet::new();
        let mark = RemovalMark {
            at: 7,
            by: Some(me),
        };
        stage_remove_peer(&mut w, &id, mark);
        let writes: Vec<Write> = w.into_iter().collect();
        assert!(writes.contains(&Write::Put {
            table: Table::Meta,
            key: removed_key(&id),
            value: mark.encode()
        }));
        for gone in [session_key(&id), init_mark_key(&id)] {
            assert!(writes.contains(&Write::Remove {
                table: Table::Meta,
                key: gone,
            }));
        }
        assert_eq!(&init_mark_key(&id)[..9], b"initmark/");
        let mut w = WriteSet::new();
        stage_init_mark(&mut w, &id, 0x0102_0304_0506_0708);
        let Some(Write::Put { value, .. }) = w.into_iter().next() else {
            panic!("a put")
        };
        assert_eq!(decode_init_mark(&value), 0x0102_0304_0506_0708);
        assert_eq!(decode_init_mark(&[1, 2, 3]), 0);
        assert_eq!(removed_of_key(&removed_key(&id)), Some(id));
        assert_eq!(RemovalMark::decode(&mark.encode()).unwrap(), mark);
        // A mark from before the membership log: the time only.
        assert_eq!(
            RemovalMark::decode(&7i64.to_be_bytes()).unwrap(),
            RemovalMark { at: 7, by: None }
        );
        assert!(RemovalMark::decode(&[0; 9]).is_err());
        // A record from before the membership log decodes without `added_by`.
        let old: PeerRecord =
            serde_json::from_str(r#"{"public_key":"00","name":"x","added":1,"last_seen":0}"#)
                .unwrap();
        assert_eq!(old.added_by(), None);
        assert!(writes.contains(&Write::RemovePrefix {
            table: Table::Meta,
            prefix: syncstate_prefix(&id)
        }));
        assert!(writes.contains(&Write::RemovePrefix {
            table: Table::Meta,
            prefix: sync_off_prefix(&id)
        }));
        assert_eq!(
            sync_off_of_key(&sync_off_key(&id, "photos")),
            Some((id, "photos".to_string()))
        );
        assert_eq!(sync_off_of_key(&sync_off_prefix(&id)), None);
        let bad = PeerRecord {
            public_key: "zz".into(),
            ..rec
        };
        assert!(bad.public().is_err());
    }
}
