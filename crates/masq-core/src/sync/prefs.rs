//! Which app's documents flow between this device and each paired device:
//! this device's own choices (pause, and per app × device off), and what
//! each peer said it takes ([`PeerPrefs`], received in the session).
//!
//! The rules, the same natively and in a page:
//! - a document of `app` is **offered** to `peer` only when this device
//!   syncs, `app` is on towards `peer` here, and `peer`'s prefs arrived in
//!   this session and say it takes `app` (so a page that holds one app is
//!   never handed another app's data, not even in the first offer);
//! - a message about `app` from `peer` is **applied** only when this
//!   device syncs and `app` is on towards `peer` here; otherwise it is
//!   dropped before it touches a document or a sync state, so turning it
//!   back on catches up in full through the normal sync.
//!
//! Each device decides for itself: its choices go to the peer as
//! [`PeerPrefs`] only so the peer stops offering what would be dropped,
//! and can show it.
//!
//! Architecture invariant: pure; the caller loads the records
//! ([`layout::meta`](crate::layout::meta)) and persists changes.

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::DeviceId;
use crate::layout::meta::{sync_off_of_key, SYNC_OFF, SYNC_PAUSED};
use crate::wire::device::PeerPrefs;

/// This device's own sync choices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPrefs {
    /// All sync paused (the relay connection stays: presence, pairing).
    pub paused: bool,
    /// (device, app) pairs turned off; everything else is on.
    pub off: BTreeSet<(DeviceId, String)>,
}

impl LocalPrefs {
    /// The choices `records` (the `meta` table's, any order) hold.
    pub fn from_records<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut out = LocalPrefs::default();
        for (k, _) in records {
            if k == SYNC_PAUSED {
                out.paused = true;
            } else if k.starts_with(SYNC_OFF) {
                if let Some(pair) = sync_off_of_key(k) {
                    out.off.insert(pair);
                }
            }
        }
        out
    }

    /// Whether `app` is on towards `peer` here (pause aside).
    pub fn app_on(&self, peer: &DeviceId, app: &str) -> bool {
        !self.off.contains(&(*peer, app.to_string()))
    }

    /// What this device tells `peer` it takes; `only`: the apps this
    /// device holds at all (a page: its own), `None` for a store.
    pub fn for_peer(&self, peer: &DeviceId, only: Option<&[String]>) -> PeerPrefs {
        PeerPrefs {
            paused: self.paused,
            off: self
                .off
                .iter()
                .filter(|(d, _)| d == peer)
                .map(|(_, a)| a.clone())
                .collect(),
            only: only.map(<[String]>::to_vec),
        }
    }
}

/// The gate every offered and every received sync message passes.
#[derive(Debug, Clone, Default)]
pub struct SyncGate {
    /// This device's choices.
    local: LocalPrefs,
    /// What each peer said it takes, in its current session.
    remote: BTreeMap<DeviceId, PeerPrefs>,
}

impl SyncGate {
    /// A gate with `local` choices and no peer heard yet.
    pub fn new(local: LocalPrefs) -> Self {
        Self {
            local,
            remote: BTreeMap::new(),
        }
    }

    /// This device's choices.
    pub fn local(&self) -> &LocalPrefs {
        &self.local
    }

    /// Replaces this device's choices (after a change was persisted).
    pub fn set_local(&mut self, local: LocalPrefs) {
        self.local = local;
    }

    /// What `peer` said it takes, if it said so in this session.
    pub fn remote(&self, peer: &DeviceId) -> Option<&PeerPrefs> {
        self.remote.get(peer)
    }

    /// `peer`'s prefs arrived. Returns whether they differ from what was
    /// known (then every document is offered to it again).
    pub fn on_remote(&mut self, peer: DeviceId, prefs: PeerPrefs) -> bool {
        self.remote.insert(peer, prefs.clone()) != Some(prefs)
    }

    /// `peer`'s session ended: what it takes is unknown until it says again.
    pub fn forget(&mut self, peer: &DeviceId) {
        self.remote.remove(peer);
    }

    /// Whether a document of `app` may be offered to `peer`.
    pub fn may_send(&self, peer: &DeviceId, app: &str) -> bool {
        !self.local.paused
            && self.local.app_on(peer, app)
            && self.remote.get(peer).is_some_and(|r| r.takes(app))
    }

    /// Whether a message about `app` from `peer` may be applied.
    pub fn may_receive(&self, peer: &DeviceId, app: &str) -> bool {
        !self.local.paused && self.local.app_on(peer, app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::meta::{stage_app_sync, stage_paused};
    use crate::records::{Write, WriteSet};

    fn load(w: WriteSet) -> LocalPrefs {
        let puts: Vec<(Vec<u8>, Vec<u8>)> = w
            .into_iter()
            .filter_map(|w| match w {
                Write::Put { key, value, .. } => Some((key, value)),
                _ => None,
            })
            .collect();
        LocalPrefs::from_records(puts.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    #[test]
    fn documents_flow_only_where_both_sides_let_them() {
        let (b, c) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let mut w = WriteSet::new();
        stage_app_sync(&mut w, &b, "photos", false);
        let local = load(w);
        assert!(!local.app_on(&b, "photos") && local.app_on(&c, "photos"));
        let mut gate = SyncGate::new(local);
        // Nothing is offered before the peer said what it takes.
        assert!(!gate.may_send(&b, "notes"));
        assert!(gate.on_remote(b, PeerPrefs::default()));
        assert!(!gate.on_remote(b, PeerPrefs::default()));
        assert!(gate.may_send(&b, "notes") && !gate.may_send(&b, "photos"));
        assert!(gate.may_receive(&b, "notes") && !gate.may_receive(&b, "photos"));
        // A page that holds `notes` only is offered nothing else.
        gate.on_remote(
            c,
            PeerPrefs {
                only: Some(vec!["notes".into()]),
                ..PeerPrefs::default()
            },
        );
        assert!(gate.may_send(&c, "notes") && !gate.may_send(&c, "photos"));
        // What this device tells each.
        assert_eq!(
            gate.local().for_peer(&b, None).off,
            vec!["photos".to_string()]
        );
        assert!(gate.local().for_peer(&c, None).off.is_empty());
        // A session's end forgets the peer's word.
        gate.forget(&b);
        assert!(!gate.may_send(&b, "notes"));
    }

    #[test]
    fn pause_stops_everything_and_survives_a_reload_of_the_records() {
        let b = DeviceId([1; 32]);
        let mut w = WriteSet::new();
        stage_paused(&mut w, true);
        let mut gate = SyncGate::new(load(w));
        gate.on_remote(b, PeerPrefs::default());
        assert!(gate.local().paused);
        assert!(!gate.may_send(&b, "notes") && !gate.may_receive(&b, "notes"));
        assert!(gate.local().for_peer(&b, None).paused);
        gate.set_local(LocalPrefs::default());
        assert!(gate.may_send(&b, "notes") && gate.may_receive(&b, "notes"));
    }
}
