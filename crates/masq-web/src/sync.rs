//! The page's sync shell, sans I/O: the core's device
//! (`masq_core::device::Device`, which holds every rule: links, sessions,
//! sync states, the gate, membership, notes) over the page's store, plus the
//! relay connection's opening ([`RelayConn`]) and the relay frames.
//!
//! The page owns the relay's WebSocket and the clock: it hands in the
//! relay's frames ([`PageSync::on_relay_frame`]), the socket's opening and
//! closing, a timer tick ([`PageSync::on_tick`]) and, after each batch of
//! the app's requests, the order to offer what changed ([`PageSync::flush`]).
//! Out come relay frames to send ([`PageSync::take_frames`]) and, in the
//! store's outbox, the records to commit.
//!
//! The one rule (as natively): **persist, then send.** The device commits
//! every advanced session through the store (its outbox) before it emits
//! the packets sealed under it; the frames wait in
//! [`PageSync::take_frames`] until the page has committed the outbox. If
//! that commit fails, the page reopens the store from IndexedDB, and this
//! shell with it (memory was ahead of the disk), so nothing ever left under
//! an unpersisted state.

use std::time::Duration;

use crate::peer_store::PeerStore;
use crate::relay_conn::{ConnError, RelayConn};
use masq_core::api::ApiError;
use masq_core::crypto::{DeviceId, DeviceKeypair};
use masq_core::device::meta::{self, ReadError};
use masq_core::device::{Device, DeviceStats, Now, Out, RelayEvent};
use masq_core::layout::meta::PeerRecord;
use masq_core::sync::membership::Group;
use masq_core::sync::prefs::LocalPrefs;
use masq_core::wire::device::PeerPrefs;
use masq_core::wire::relay_frame::Frame;

pub use masq_core::device::{RECENT_EVENTS, RESYNC_INTERVAL};

/// The name a page's device shows until the page gives one.
pub const DEFAULT_NAME: &str = "masq web app";

/// What the page's device reports (the page's `status` answer's `sync`).
pub type SyncStats = DeviceStats;

/// One page's device and its relay connection.
pub struct PageSync {
    /// The device (every rule of the protocol).
    device: Device,
    /// The relay connection's opening (`None`: no connection).
    conn: Option<RelayConn>,
    /// Relay frames to send once the outbox is committed.
    frames: Vec<Vec<u8>>,
    /// The next message id for a `Send` frame.
    next_msg_id: u64,
}

/// A sync step failed on this page's side (its storage): the page reopens.
pub type SyncResult<T> = Result<T, ApiError>;

/// The page's time as the device takes it: `now` since the Unix epoch,
/// which the page's clock gives for both.
fn at(now: Duration) -> Now {
    Now {
        mono: now,
        unix_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
    }
}

fn read_error(e: ReadError<ApiError>) -> ApiError {
    match e {
        ReadError::Storage(e) => e,
        ReadError::Malformed(what) => {
            ApiError::new("corrupt", format!("stored {what} is malformed"))
        }
    }
}

impl PageSync {
    /// The device of `store`: its identity is loaded, or made and put in
    /// the outbox (committed with the next batch, before any frame that
    /// uses it leaves).
    pub fn open(store: &PeerStore) -> SyncResult<Self> {
        let now = Duration::from_secs(u64::try_from(store.now_secs()).unwrap_or(0));
        Ok(PageSync {
            device: Device::open(store, at(now)).map_err(read_error)?,
            conn: None,
            frames: Vec::new(),
            next_msg_id: 1,
        })
    }

    /// Sets how often every document is offered again (the default is
    /// [`RESYNC_INTERVAL`]).
    pub fn set_resync_interval(&mut self, every: Duration) {
        self.device.set_resync_interval(every);
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device.device_id()
    }

    /// This device's key pair.
    pub fn keypair(&self) -> &DeviceKeypair {
        self.device.keypair()
    }

    /// The counters.
    pub fn stats(&self) -> &SyncStats {
        self.device.stats()
    }

    /// Whether `peer` is online and syncing.
    pub fn is_ready(&self, peer: &DeviceId) -> bool {
        self.device.is_ready(peer)
    }

    /// Whether `peer` is online.
    pub fn is_online(&self, peer: &DeviceId) -> bool {
        self.device.is_online(peer)
    }

    /// This page's own sync choices.
    pub fn local_prefs(&self) -> &LocalPrefs {
        self.device.local_prefs()
    }

    /// What `peer` said it takes, in its current session.
    pub fn remote_prefs(&self, peer: &DeviceId) -> Option<&PeerPrefs> {
        self.device.remote_prefs(peer)
    }

    /// Relay frames to send now (the outbox they depend on is committed).
    pub fn take_frames(&mut self) -> Vec<Vec<u8>> {
        self.drain_out();
        std::mem::take(&mut self.frames)
    }

    fn push(&mut self, frame: Frame) {
        self.frames.push(frame.encode());
    }

    /// The device's sends, as relay frames.
    fn drain_out(&mut self) {
        for out in self.device.take_out() {
            let frame = match out {
                Out::Packet { to, bytes } => {
                    let msg_id = self.next_msg_id;
                    self.next_msg_id += 1;
                    Frame::Send {
                        msg_id,
                        to,
                        payload: bytes,
                    }
                }
                Out::Allow(ids) => Frame::Allow(ids),
                Out::Watch(ids) => Frame::Subscribe(ids),
            };
            self.push(frame);
        }
    }

    /// The set of peers changed (pairing, removal): links follow, the relay
    /// is told, and queued notes go.
    pub fn peers_changed(&mut self, store: &PeerStore) -> SyncResult<()> {
        let now = Duration::from_secs(u64::try_from(store.now_secs()).unwrap_or(0));
        self.device.peers_changed(store, at(now))
    }

    /// This device's sync choices changed in its records (which app syncs
    /// with which device, pause): every ready peer is told, and offered
    /// what it may now take.
    pub fn prefs_changed(&mut self, store: &PeerStore) -> SyncResult<()> {
        self.device.prefs_changed(store)
    }

    /// The page opened a WebSocket to the relay.
    pub fn on_relay_open(&mut self) {
        self.conn = Some(RelayConn::new());
    }

    /// The relay's WebSocket closed: every peer is offline until it is back.
    pub fn on_relay_closed(&mut self) {
        self.conn = None;
        // Frames for the closed connection never go out on the next one
        // (which must open with the answer to its own challenge).
        self.frames.clear();
        self.device.relay_down();
    }

    /// One binary frame from the relay. `Err`: the page's storage failed
    /// (it reopens); `Ok(Err)`: the connection cannot go on (the page
    /// closes it).
    pub fn on_relay_frame(
        &mut self,
        store: &PeerStore,
        bytes: &[u8],
        now: Duration,
    ) -> SyncResult<Result<(), ConnError>> {
        let Ok(frame) = Frame::decode(bytes) else {
            self.device
                .note_rejected("the relay sent a frame that does not decode".into());
            return Ok(Ok(()));
        };
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Err(ConnError::Protocol("a frame with no connection")));
        };
        if !conn.is_ready() {
            let out = match conn.on_frame(self.device.keypair(), &frame) {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(f) = out {
                self.push(f);
            }
            if self.conn.as_ref().is_some_and(RelayConn::is_ready) {
                self.device.relay_up(store, at(now))?;
            }
            return Ok(Ok(()));
        }
        let event = match frame {
            Frame::Presence { id, online: true } => RelayEvent::Online(id),
            Frame::Presence { id, online: false } => RelayEvent::Offline(id),
            Frame::Undeliverable { to, reason, .. } => RelayEvent::Undeliverable(to, reason),
            Frame::Deliver { from, payload } => RelayEvent::Packet {
                from,
                bytes: payload,
            },
            Frame::Error { code, message } => {
                self.device
                    .note_error(format!("relay error {code}: {message}"));
                return Ok(Ok(()));
            }
            _ => return Ok(Ok(())),
        };
        self.device.on_relay_event(store, event, at(now))?;
        Ok(Ok(()))
    }

    /// After a batch of the app's requests: what changed is offered to
    /// every ready peer (except the one a change came from).
    pub fn flush(&mut self, store: &PeerStore) -> SyncResult<()> {
        // The batch's KV writes become their shards' changes first, or
        // they would wait for the next batch to be offered.
        store.fold_batch()?;
        let app = store.app().to_string();
        let changed: Vec<_> = store
            .take_changed()
            .into_iter()
            .map(|(doc, from)| ((app.clone(), doc), from))
            .collect();
        self.device.offer_changed(store, &changed)
    }

    /// The page's timer (about once a second): unanswered handshakes are
    /// sent again, busy peers restart, and every [`RESYNC_INTERVAL`] every
    /// document is offered again.
    pub fn on_tick(&mut self, store: &PeerStore, now: Duration) -> SyncResult<()> {
        if !self.conn.as_ref().is_some_and(RelayConn::is_ready) {
            return Ok(());
        }
        self.device.on_tick(store, at(now))
    }
}

/// Whether `e` is about one document (its stored records do not decode)
/// rather than the page's storage: the document is skipped, sync goes on.
pub(crate) fn is_document_fault(e: &ApiError) -> bool {
    e.code == "corrupt"
}

/// The device group as the page records it.
pub fn group(store: &PeerStore, me: DeviceId) -> Group {
    meta::group(store, me).unwrap_or_else(|_| Group::from_records(me, []))
}

/// The paired devices, in id order.
pub fn peers(store: &PeerStore) -> Vec<(DeviceId, PeerRecord)> {
    meta::peers(store).unwrap_or_default()
}

/// This device's name.
pub fn device_name(store: &PeerStore) -> String {
    meta::device_name(store)
        .ok()
        .flatten()
        .unwrap_or_else(|| DEFAULT_NAME.to_string())
}

/// The relay this device uses, once it paired.
pub fn relay_url(store: &PeerStore) -> Option<String> {
    meta::relay_url(store).ok().flatten()
}
