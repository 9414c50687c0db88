//! Forwarding: each connection's bounded queue as others reach it
//! ([`Peer`]), the table of this node's connections by device
//! ([`ConnectionTable`]), and refusals.
//!
//! Others' messages may fill only their part of a connection's queue, each
//! sender at most its share ([`SENDER_SHARE_DIVISOR`]), and only senders the
//! device allowed (`Allow`); past that a send is refused at the sender
//! (`Undeliverable`), so no flood disconnects the recipient. The relay's own
//! answers have a reserve of their own; a device that lets those pile up is
//! disconnected as too slow.
//!
//! Knows nothing of sockets, authentication, rendezvous slots or who
//! watches whom: a payload is opaque bytes, counted and queued.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::kill::Kill;
use super::metrics::Metrics;
use super::presence::PresenceOut;
use crate::cluster::{Inbound, RemoteSend};
use crate::config::{
    RelayConfig, CONTROL_RESERVE_BYTES, CONTROL_RESERVE_FRAMES, MAX_QUEUED_BYTES,
    SENDER_SHARE_DIVISOR,
};
use masq_core::crypto::DeviceId;
use masq_core::wire::relay_frame::{codes, Frame, UndeliverableReason};

/// One item of a connection's queue: a frame, and the device whose message
/// it carries (counted against that sender's share until written).
pub(super) struct Out {
    /// The encoded frame to write.
    pub(super) frame: Vec<u8>,
    /// The sender whose message it is; None for the relay's own answers.
    from: Option<DeviceId>,
}

/// Others' messages queued for one connection, per sender.
#[derive(Default)]
struct Inbox {
    /// sender → (frames, bytes) queued.
    by_sender: HashMap<DeviceId, (usize, usize)>,
    /// Frames of others' messages queued (the sum over `by_sender`).
    frames: usize,
}

/// The sending side of one connection, as seen by others.
#[derive(Clone)]
pub(super) struct Peer {
    /// Distinguishes this connection from a newer one of the same device.
    pub(super) conn_id: u64,
    /// Bounded queue to the writer task.
    tx: mpsc::Sender<Out>,
    /// Bytes currently queued.
    queued: Arc<AtomicUsize>,
    /// Others' messages queued, per sender.
    inbox: Arc<Mutex<Inbox>>,
    /// Who may send to this connection (`Allow`); None: anyone.
    allow: Arc<Mutex<Option<HashSet<DeviceId>>>>,
    /// Presence states waiting to be written.
    pub(super) presence: Arc<PresenceOut>,
    /// Stops the connection.
    pub(super) kill: Arc<Kill>,
}

impl Peer {
    /// A new connection's sending side, and the receiving end of its queue
    /// for the writer: room for `outbound_queue_frames` of others' messages
    /// (at least one) plus [`CONTROL_RESERVE_FRAMES`] of the relay's own.
    pub(super) fn new(conn_id: u64, outbound_queue_frames: usize) -> (Self, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel::<Out>(outbound_queue_frames.max(1) + CONTROL_RESERVE_FRAMES);
        let peer = Self {
            conn_id,
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            inbox: Arc::default(),
            allow: Arc::default(),
            presence: Arc::default(),
            kill: Arc::new(Kill::default()),
        };
        (peer, rx)
    }

    /// Lets only `ids` send to this connection from now on (`Allow`).
    pub(super) fn allow_only(&self, ids: Vec<DeviceId>) {
        if let Ok(mut a) = self.allow.lock() {
            *a = Some(ids.into_iter().collect());
        }
    }

    /// Queues a frame of the relay's own (an answer to this device); a full
    /// queue disconnects the device as too slow.
    pub(super) fn push(&self, frame: Vec<u8>, metrics: &Metrics) -> bool {
        let len = frame.len();
        if self.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            metrics.drops_too_slow.fetch_add(1, Ordering::Relaxed);
            self.kill
                .kill(codes::TOO_SLOW, "too slow: outbound queue full");
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(Out { frame, from: None }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                metrics.drops_too_slow.fetch_add(1, Ordering::Relaxed);
                self.kill
                    .kill(codes::TOO_SLOW, "too slow: outbound queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues a message from `from`, if this connection allows `from` and
    /// there is room in the queue and in `from`'s share of it. A refusal
    /// says why and costs the recipient nothing (it is never disconnected
    /// for others' messages).
    pub(super) fn deliver(
        &self,
        from: DeviceId,
        frame: Vec<u8>,
        config: &RelayConfig,
    ) -> Result<(), UndeliverableReason> {
        if !self.allows(from) {
            return Err(UndeliverableReason::NotAllowed);
        }
        let len = frame.len();
        let max_frames = config.outbound_queue_frames.max(1);
        let share_frames = (max_frames / SENDER_SHARE_DIVISOR).max(1);
        let byte_budget = MAX_QUEUED_BYTES - CONTROL_RESERVE_BYTES;
        let share_bytes = byte_budget / SENDER_SHARE_DIVISOR;
        let Ok(mut inbox) = self.inbox.lock() else {
            return Err(UndeliverableReason::RecipientBusy);
        };
        let (frames, bytes) = inbox.by_sender.get(&from).copied().unwrap_or((0, 0));
        if inbox.frames >= max_frames
            || frames >= share_frames
            || (bytes > 0 && bytes + len > share_bytes)
            || self.queued.load(Ordering::Relaxed) + len > byte_budget
        {
            return Err(UndeliverableReason::RecipientBusy);
        }
        // Counted before it is queued (the writer uncounts under this lock).
        inbox.by_sender.insert(from, (frames + 1, bytes + len));
        inbox.frames += 1;
        self.queued.fetch_add(len, Ordering::Relaxed);
        let refused = match self.tx.try_send(Out {
            frame,
            from: Some(from),
        }) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => UndeliverableReason::RecipientBusy,
            Err(mpsc::error::TrySendError::Closed(_)) => UndeliverableReason::Offline,
        };
        self.queued.fetch_sub(len, Ordering::Relaxed);
        inbox.frames -= 1;
        if frames == 0 {
            inbox.by_sender.remove(&from);
        } else {
            inbox.by_sender.insert(from, (frames, bytes));
        }
        Err(refused)
    }

    /// Whether this connection's allow list lets `from` send to it.
    fn allows(&self, from: DeviceId) -> bool {
        match self.allow.lock() {
            Ok(a) => a.as_ref().map(|set| set.contains(&from)).unwrap_or(true),
            Err(_) => false,
        }
    }

    /// The writer took `out` off the queue.
    pub(super) fn dequeued(&self, out: &Out) {
        self.queued.fetch_sub(out.frame.len(), Ordering::Relaxed);
        let Some(from) = out.from else { return };
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.frames = inbox.frames.saturating_sub(1);
            if let Some(e) = inbox.by_sender.get_mut(&from) {
                e.0 = e.0.saturating_sub(1);
                e.1 = e.1.saturating_sub(out.frame.len());
                if e.0 == 0 {
                    inbox.by_sender.remove(&from);
                }
            }
        }
    }
}

/// This node's connections: each device's current one.
#[derive(Default)]
pub(super) struct ConnectionTable {
    /// device → its current connection.
    by_device: Mutex<HashMap<DeviceId, Peer>>,
}

impl ConnectionTable {
    /// The device's current connection here, if any.
    pub(super) fn get(&self, device: &DeviceId) -> Option<Peer> {
        self.by_device
            .lock()
            .ok()
            .and_then(|c| c.get(device).cloned())
    }

    /// The device's connection `conn_id`, if it is still the current one.
    pub(super) fn current(&self, device: &DeviceId, conn_id: u64) -> Option<Peer> {
        self.get(device).filter(|p| p.conn_id == conn_id)
    }

    /// Of the (device, connection id) pairs, the connections that are still
    /// their device's current one (read at one moment).
    pub(super) fn current_of(&self, conns: &[(DeviceId, u64)]) -> Vec<Peer> {
        match self.by_device.lock() {
            Ok(c) => conns
                .iter()
                .filter_map(|(d, cid)| c.get(d).filter(|p| p.conn_id == *cid).cloned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether each of `ids` has a connection here (None if the table is
    /// unreadable).
    pub(super) fn online(&self, ids: &[DeviceId]) -> Option<Vec<bool>> {
        match self.by_device.lock() {
            Ok(c) => Some(ids.iter().map(|id| c.contains_key(id)).collect()),
            Err(_) => None,
        }
    }

    /// Makes `peer` the device's current connection; returns the one it
    /// replaces.
    pub(super) fn insert(&self, device: DeviceId, peer: Peer) -> Option<Peer> {
        self.by_device
            .lock()
            .ok()
            .and_then(|mut c| c.insert(device, peer))
    }

    /// Removes the device's connection `conn_id` if it is still the current
    /// one (not replaced by a newer connection); whether it was.
    pub(super) fn remove_if_current(&self, device: DeviceId, conn_id: u64) -> bool {
        match self.by_device.lock() {
            Ok(mut c) => {
                if c.get(&device)
                    .map(|p| p.conn_id == conn_id)
                    .unwrap_or(false)
                {
                    c.remove(&device);
                    true
                } else {
                    false
                }
            }
            Err(_) => false,
        }
    }
}

/// Counts a refused send in the metrics.
pub(super) fn count_refusal(m: &Metrics, reason: UndeliverableReason) {
    let c = match reason {
        UndeliverableReason::Offline => &m.drops_offline,
        UndeliverableReason::ToSelf => &m.drops_to_self,
        UndeliverableReason::RateLimited => &m.drops_rate_limited,
        UndeliverableReason::NotAllowed => &m.drops_not_allowed,
        UndeliverableReason::RecipientBusy => &m.drops_recipient_busy,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// A message of `from` (its connection `conn_id`) for `to`, which is not on
/// this node: a `Deliver` frame for the cluster to publish, and the
/// `Undeliverable` (offline) to answer `from` with if no node holds `to`.
pub(super) fn remote_send(
    from: DeviceId,
    conn_id: u64,
    msg_id: u64,
    to: DeviceId,
    payload: Vec<u8>,
) -> RemoteSend {
    RemoteSend {
        to,
        from,
        msg_id,
        frame: Frame::Deliver { from, payload }.encode(),
        if_offline: Inbound::ToConn {
            device: from,
            conn_id,
            frame: Frame::Undeliverable {
                msg_id,
                to,
                reason: UndeliverableReason::Offline,
            }
            .encode(),
        },
    }
}
