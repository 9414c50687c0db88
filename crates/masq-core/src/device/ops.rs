//! The device operations every shell answers the same way (the admin's
//! `devices.list`, `devices.remove`, `devices.name`), once: a native store
//! through its admin protocol and CLI, a page in peer mode through its own
//! requests. One set of error codes: `not_found` when no paired device
//! matches, `bad_request` for an empty or ambiguous name or a bad device
//! name, `storage` when the records could not be read or written.

use std::fmt::Display;

use serde_json::{json, Value};

use crate::api::ApiError;
use crate::crypto::{safety_code, DeviceId, DeviceKeypair};
use crate::layout::meta::NAME;
use crate::records::{Table, WriteSet};
use crate::wire::device::MAX_NAME_BYTES;

use super::host::{Commit, DeviceHost};
use super::meta::{self, ReadError};

fn storage(e: impl Display) -> ApiError {
    ApiError::new("storage", e.to_string())
}

fn read<E: Display>(e: ReadError<E>) -> ApiError {
    storage(e)
}

/// The paired device `needle` names: its whole hex id, or a prefix of its
/// id or of its fingerprint (any case, at least one character).
pub fn find_peer<H: DeviceHost>(host: &H, needle: &str) -> Result<DeviceId, ApiError> {
    let needle = needle.trim().to_ascii_lowercase();
    if needle.is_empty() {
        return Err(ApiError::new(
            "bad_request",
            "name a device: its id or the start of its fingerprint",
        ));
    }
    let matches: Vec<DeviceId> = meta::peers(host)
        .map_err(read)?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| {
            id.to_string().starts_with(&needle)
                || id.fingerprint().to_ascii_lowercase().starts_with(&needle)
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(ApiError::new(
            "not_found",
            format!("no paired device matches {needle:?}"),
        )),
        _ => Err(ApiError::new(
            "bad_request",
            format!("{needle:?} matches several devices; give more of the id"),
        )),
    }
}

/// Removes the paired device `needle` names from the group, under the
/// group's guard: its records go here, and the removal is queued for every
/// other member (the membership log). The caller tells its device the
/// peers changed. Returns the removed device.
pub fn remove<H: DeviceHost>(
    host: &H,
    me: DeviceId,
    needle: &str,
    now_secs: i64,
) -> Result<DeviceId, ApiError> {
    let _group = host.lock_group();
    let id = find_peer(host, needle)?;
    let change = meta::group(host, me)
        .map_err(storage)?
        .remove(&id, now_secs)
        .map_err(|e| ApiError::new("not_found", e.to_string()))?;
    host.commit(change.writes, Commit::Received)
        .map_err(storage)?;
    Ok(id)
}

/// Names this device (1 to 255 bytes, spaces around it trimmed).
pub fn set_name<H: DeviceHost>(host: &H, name: &str) -> Result<(), ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(ApiError::new(
            "bad_request",
            "a device name is 1 to 255 bytes",
        ));
    }
    let mut w = WriteSet::new();
    w.put(Table::Meta, NAME.to_vec(), name.as_bytes().to_vec());
    host.commit(w, Commit::Received).map_err(storage)
}

/// Where a paired device stands with this one's sync, as the shell knows.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkState {
    /// The relay says it is online.
    pub online: bool,
    /// A session is up and sync runs.
    pub syncing: bool,
}

/// `devices.list`: this device, its paired devices (with their safety
/// codes and who brought them in) and the removals it knows.
pub fn devices_list<H: DeviceHost>(
    host: &H,
    kp: &DeviceKeypair,
    link: impl Fn(&DeviceId) -> LinkState,
) -> Result<Value, ApiError> {
    let me = kp.device_id();
    let mut list = Vec::new();
    for (id, rec) in meta::peers(host).map_err(read)? {
        let state = link(&id);
        list.push(json!({
            "device": id.to_string(),
            "fingerprint": id.fingerprint(),
            "name": rec.name,
            "online": state.online,
            "syncing": state.syncing,
            "last_seen": rec.last_seen,
            "safety_code": rec.public().map(|p| safety_code(&kp.public(), &p)).map_err(storage)?,
            "added": rec.added,
            "added_by": rec.added_by().map(|b| b.fingerprint()),
        }));
    }
    let name = meta::device_name(host)
        .map_err(storage)?
        .unwrap_or_else(|| host.default_name());
    Ok(json!({
        "me": {
            "device": me.to_string(),
            "fingerprint": me.fingerprint(),
            "name": name,
        },
        "devices": list,
        "removed": meta::group(host, me).map_err(storage)?.removed_entries(),
    }))
}
