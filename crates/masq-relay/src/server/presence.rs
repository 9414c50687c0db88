//! Presence: who watches which device ([`Watchers`], the relay-wide table
//! that `Subscribe` fills) and, per connection, the presence states waiting
//! to be written to it ([`PresenceOut`]).
//!
//! Presence answers are not queued frames: they are kept as one latest state
//! per watched device and written when there is room, so watching many
//! devices cannot overflow the watcher.
//!
//! Knows nothing of the connection table, queues or sockets: the hub looks
//! up the watching connections and hands each its [`PresenceOut`] update.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use masq_core::crypto::DeviceId;
use masq_core::wire::relay_frame::Frame;

/// A watching connection: its device and connection id.
pub(super) type Watcher = (DeviceId, u64);

/// Every watch list of this node's connections, by watched device.
#[derive(Default)]
pub(super) struct Watchers {
    /// target → connections watching it.
    by_target: Mutex<HashMap<DeviceId, HashSet<Watcher>>>,
}

impl Watchers {
    /// Makes `ids` the watch list of `watcher`, replacing its previous one.
    pub(super) fn replace(&self, watcher: Watcher, ids: &[DeviceId]) {
        if let Ok(mut w) = self.by_target.lock() {
            for set in w.values_mut() {
                set.remove(&watcher);
            }
            for id in ids {
                w.entry(*id).or_default().insert(watcher);
            }
            w.retain(|_, s| !s.is_empty());
        }
    }

    /// Forgets the watch list of `watcher` (its connection ended).
    pub(super) fn forget(&self, watcher: Watcher) {
        if let Ok(mut w) = self.by_target.lock() {
            for set in w.values_mut() {
                set.remove(&watcher);
            }
            w.retain(|_, s| !s.is_empty());
        }
    }

    /// The connections watching `device`.
    pub(super) fn of(&self, device: DeviceId) -> Vec<Watcher> {
        match self.by_target.lock() {
            Ok(w) => w
                .get(&device)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

/// Presence for one connection: the latest state of each watched device not
/// yet written, instead of one queued frame per change, so its size is
/// bounded by the watch list
/// ([`MAX_WATCH_IDS`](crate::config::MAX_WATCH_IDS)) whatever the churn.
#[derive(Default)]
pub(super) struct PresenceOut {
    /// The devices this connection watches.
    watching: Mutex<HashSet<DeviceId>>,
    /// device → (went offline since last written, online now).
    pending: Mutex<HashMap<DeviceId, (bool, bool)>>,
    /// Wakes the writer.
    notify: Notify,
}

impl PresenceOut {
    /// Replaces the watch list; forgets pending states of unwatched devices.
    pub(super) fn watch(&self, ids: &[DeviceId]) {
        let set: HashSet<DeviceId> = ids.iter().copied().collect();
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|id, _| set.contains(id));
        }
        if let Ok(mut w) = self.watching.lock() {
            *w = set;
        }
    }

    /// Records a presence state for the writer (only for watched devices).
    /// An offline followed by an online before the writer ran is written as
    /// both, so the watcher still sees that the device reconnected.
    pub(super) fn set(&self, id: DeviceId, online: bool) {
        let watched = self
            .watching
            .lock()
            .map(|w| w.contains(&id))
            .unwrap_or(false);
        if !watched {
            return;
        }
        if let Ok(mut p) = self.pending.lock() {
            let e = p.entry(id).or_insert((false, online));
            *e = (e.0 || !e.1, online);
        }
        self.notify.notify_one();
    }

    /// Resolves when there are states to write (see [`take_frames`](Self::take_frames)).
    pub(super) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// The frames to write now, emptying the pending states.
    pub(super) fn take_frames(&self) -> Vec<Vec<u8>> {
        let pending: Vec<(DeviceId, (bool, bool))> = match self.pending.lock() {
            Ok(mut p) => p.drain().collect(),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::with_capacity(pending.len());
        for (id, (went_offline, online)) in pending {
            if went_offline && online {
                out.push(Frame::Presence { id, online: false }.encode());
            }
            out.push(Frame::Presence { id, online }.encode());
        }
        out
    }
}
