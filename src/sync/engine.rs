//! The sync engine: the I/O shell around the sans-I/O protocol. One tokio
//! task per store owns the relay connection and drives, for every paired
//! device, a [`PeerLink`] (`masq_core::sync::link`: handshakes, sessions,
//! sealing, opening, fragments, resend timers) and the [`SyncCore`]
//! (Automerge sync states, batches, applying them to the store).
//!
//! The engine's part is I/O and order: it feeds the links relay events,
//! packets and the time, and for every step that advances a ratchet it
//! persists the link's `SessionUpdate` first (with the changes a received
//! payload carried, in one atomic batch), commits it to the link, and only
//! then sends.
//!
//! Blocking work (fjall, Automerge) runs under `block_in_place`, so the engine
//! needs tokio's multi-thread runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use masq_core::sync::link::{LinkError, Online, PeerLink, Received, SealError, SessionUpdate};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::core::SyncCore;
use super::peers;
use super::transport::{Transport, TransportEvent};
use super::wire::SyncPayload;
use crate::crypto::ratchet::Session;
use crate::crypto::{DeviceId, DeviceKeypair};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::wire::relay_frame::UndeliverableReason;
use masq_core::layout::meta as layout;
use masq_core::sync::membership::{Change, MembershipError};

/// The engine checks for stale inits every half of this.
pub use masq_core::sync::handshake_rules::HANDSHAKE_RESEND_AFTER;
/// First reconnect delay after losing the relay; doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What the engine reports about itself.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStatus {
    /// Connected and authenticated to the relay.
    pub relay_connected: bool,
    /// Paired devices the relay reports online (hex ids).
    pub online: Vec<String>,
    /// Online devices with an established session, syncing.
    pub syncing: Vec<String>,
    /// Envelopes sealed and sent.
    pub envelopes_sent: u64,
    /// Envelopes received and opened.
    pub envelopes_received: u64,
    /// Bytes handed to the relay.
    pub bytes_sent: u64,
    /// Bytes received from the relay.
    pub bytes_received: u64,
    /// Envelopes or packets rejected (bad, unknown sender, replay, ...).
    pub rejected: u64,
    /// This store's sync is paused (its choice, kept across restarts).
    pub paused: bool,
    /// Sync messages dropped because their app does not sync with the
    /// sender here (or sync is paused).
    pub filtered: u64,
    /// What each syncing device said it takes from this one (its own
    /// choices), as far as it said so in its current session.
    pub peer_prefs: Vec<PeerPrefsView>,
}

/// What a paired device said it takes from this store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PeerPrefsView {
    /// The device (hex id).
    pub device: String,
    /// Its sync is paused.
    pub paused: bool,
    /// Apps it turned off towards this store.
    pub off: Vec<String>,
    /// The only apps it holds (a web page: its own), if it said so.
    pub only: Option<Vec<String>>,
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Relay URL (ws://...).
    pub relay_url: String,
    /// How often every ready peer is offered every document again from the
    /// persisted sync states, recovering from messages lost in transit
    /// (Automerge's sync assumes a reliable stream; the relay may drop).
    pub resync_interval: Duration,
}

impl EngineConfig {
    /// Defaults for `relay_url`.
    pub fn new(relay_url: impl Into<String>) -> Self {
        Self {
            relay_url: relay_url.into(),
            resync_interval: RESYNC_INTERVAL,
        }
    }
}

/// Default [`EngineConfig::resync_interval`].
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Changed documents are offered to peers at most this often: every change
/// made within one window travels in one sealed message per peer (a burst of
/// 100 000 small changes is a few thousand messages, not 100 000), at the cost
/// of up to this much added latency.
pub const SYNC_DEBOUNCE: Duration = Duration::from_millis(20);

/// A running sync engine. Dropping it stops the task.
pub struct SyncEngine {
    /// Peers were added or removed outside the engine (pairing, CLI). A
    /// `Notify` keeps at most one wake-up pending however often it is
    /// told, so the engine's inbox is bounded by construction.
    peers_changed: Arc<Notify>,
    /// This store's sync choices changed in the store (admin op, CLI):
    /// the engine reads them again and tells its peers. A `Notify` too.
    prefs_changed: Arc<Notify>,
    /// Asks the task to stop (it closes its relay connection first).
    stop: CancellationToken,
    /// Latest status.
    status: watch::Receiver<EngineStatus>,
    /// The task; aborted on drop.
    task: Option<JoinHandle<()>>,
}

impl Drop for SyncEngine {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl SyncEngine {
    /// Starts syncing `store` through the relay at `relay_url` with default settings.
    pub fn start(store: Store, relay_url: String) -> Result<Self> {
        Self::start_with(store, EngineConfig::new(relay_url))
    }

    /// Starts syncing `store` as configured.
    pub fn start_with(store: Store, config: EngineConfig) -> Result<Self> {
        let kp = peers::load_or_create_identity(store.db())?;
        let peers_changed = Arc::new(Notify::new());
        let prefs_changed = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let (status_tx, status_rx) = watch::channel(EngineStatus::default());
        let engine = Engine {
            me: kp.device_id(),
            kp,
            core: SyncCore::new(store.clone()),
            store,
            peers: HashMap::new(),
            epoch: std::time::Instant::now(),
            status: status_tx,
            stats: EngineStatus::default(),
            busy: Default::default(),
        };
        let task = tokio::spawn(engine.run(
            config,
            peers_changed.clone(),
            prefs_changed.clone(),
            stop.clone(),
        ));
        Ok(Self {
            peers_changed,
            prefs_changed,
            stop,
            status: status_rx,
            task: Some(task),
        })
    }

    /// The latest status.
    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status update (for tests that wait on
    /// a status change).
    #[cfg(feature = "internals")]
    pub fn watch_status(&self) -> watch::Receiver<EngineStatus> {
        self.status.clone()
    }

    /// Tells the engine the set of peers changed (after pairing or removal).
    pub fn peers_changed(&self) {
        self.peers_changed.notify_one();
    }

    /// Tells the engine this store's sync choices changed in the store.
    pub fn prefs_changed(&self) {
        self.prefs_changed.notify_one();
    }

    /// Stops the engine and waits for its task.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

struct Engine {
    store: Store,
    kp: DeviceKeypair,
    me: DeviceId,
    core: SyncCore,
    /// The protocol state with each paired device (`masq_core`'s sans-I/O
    /// state machine; this shell persists its updates and sends its packets).
    peers: HashMap<DeviceId, PeerLink>,
    /// The engine's clock origin: the links take time as a duration since it.
    epoch: std::time::Instant,
    status: watch::Sender<EngineStatus>,
    stats: EngineStatus,
    /// Online peers whose messages the relay refused as busy or rate
    /// limited: sync restarts with them on the next retry tick.
    busy: std::collections::HashSet<DeviceId>,
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Engine {
    /// Now, as the core's rules take it.
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn run(
        mut self,
        config: EngineConfig,
        peers_changed: Arc<Notify>,
        prefs_changed: Arc<Notify>,
        stop: CancellationToken,
    ) {
        let relay_url = config.relay_url.clone();
        let mut delay = RECONNECT_MIN;
        let mut changes = self.store.subscribe_changes();
        self.stats.paused = self.core.local_prefs().paused;
        loop {
            self.load_peers();
            let transport = tokio::select! {
                t = Transport::connect(&relay_url, &self.kp) => t,
                _ = peers_changed.notified() => continue,
                _ = stop.cancelled() => return,
            };
            let mut transport = match transport {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!("relay connect failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            delay = RECONNECT_MIN;
            // Choices made while the relay was away hold from the first
            // packet of this connection on.
            if let Err(e) = blocking(|| self.core.reload_prefs()) {
                tracing::warn!("cannot read the sync preferences: {e}");
            }
            self.stats.paused = self.core.local_prefs().paused;
            self.stats.relay_connected = true;
            self.publish_status();
            if let Err(e) = self.announce_peers(&mut transport).await {
                tracing::debug!("allow/presence subscribe failed: {e}");
            }
            let mut resync = tokio::time::interval(config.resync_interval);
            resync.tick().await;
            // Unanswered handshakes are retried on their own, faster clock:
            // waiting for the resync tick left a fresh pairing unsynced for
            // up to `resync_interval` (30 s) when the first init was dropped.
            let mut handshake_retry = tokio::time::interval(HANDSHAKE_RESEND_AFTER / 2);
            handshake_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            handshake_retry.tick().await;
            let mut debounce = tokio::time::interval(SYNC_DEBOUNCE);
            debounce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Documents changed since the last flush, with the one peer they
            // came from (not offered back to it), or None if changed here.
            let mut dirty: HashMap<(String, crate::doc::DocId), Option<DeviceId>> = HashMap::new();
            let stopping = loop {
                tokio::select! {
                    _ = resync.tick() => self.on_tick(&mut transport).await,
                    _ = handshake_retry.tick() => {
                        self.resend_stale_handshakes(&mut transport).await;
                        self.retry_busy(&mut transport).await;
                    }
                    _ = debounce.tick(), if !dirty.is_empty() => {
                        let batch = std::mem::take(&mut dirty);
                        self.offer_changed(&mut transport, batch).await;
                    }
                    ev = transport.next() => match ev {
                        Some(TransportEvent::Closed(reason)) | Some(TransportEvent::Error(reason)) => {
                            tracing::info!("relay connection closed: {reason}");
                            break false;
                        }
                        None => break false,
                        Some(ev) => self.on_transport_event(&mut transport, ev).await,
                    },
                    ch = changes.recv() => match ch {
                        Ok((app, doc, origin)) => {
                            let from = match &origin {
                                crate::store::Origin::Remote(hex) => DeviceId::parse(hex),
                                crate::store::Origin::Local => None,
                            };
                            dirty
                                .entry((app, doc))
                                .and_modify(|f| if *f != from { *f = None })
                                .or_insert(from);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            dirty.clear();
                            self.resync_all(&mut transport).await
                        }
                        Err(_) => break true,
                    },
                    _ = peers_changed.notified() => {
                        self.load_peers();
                        let _ = self.announce_peers(&mut transport).await;
                        self.flush_notes(&mut transport).await;
                    }
                    _ = prefs_changed.notified() => self.on_prefs_changed(&mut transport).await,
                    _ = stop.cancelled() => break true,
                }
            };
            transport.close().await;
            self.stats.relay_connected = false;
            self.busy.clear();
            for (id, p) in self.peers.iter_mut() {
                p.offline();
                self.core.peer_offline(id);
            }
            self.publish_status();
            if stopping {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// This store's sync choices changed: every syncing peer is told, and
    /// offered again every document it may now have (what was off or
    /// paused catches up through the normal sync).
    async fn on_prefs_changed(&mut self, t: &mut Transport) {
        if let Err(e) = blocking(|| self.core.reload_prefs()) {
            tracing::warn!("cannot read the sync preferences: {e}");
            return;
        }
        self.stats.paused = self.core.local_prefs().paused;
        let ready = self.ready_peers();
        for id in ready {
            let offer = blocking(|| self.core.on_peer_ready(&id));
            self.send_prefs_with(t, id, offer).await;
        }
        self.publish_status();
    }

    /// Sends `id` this store's prefs, then `offer` (sync messages; an
    /// error is logged, the prefs go anyway).
    async fn send_prefs_with(
        &mut self,
        t: &mut Transport,
        id: DeviceId,
        offer: Result<Vec<SyncPayload>>,
    ) {
        let mut payloads = vec![SyncPayload::Prefs(self.core.prefs_for(&id))];
        match offer {
            Ok(b) => payloads.extend(b),
            Err(e) => tracing::warn!("cannot generate sync for {id:?}: {e}"),
        }
        self.send_payloads(t, id, payloads, &[]).await;
    }

    /// The paired devices sync runs with now (session up, sync started).
    fn ready_peers(&self) -> Vec<DeviceId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.is_ready())
            .map(|(id, _)| *id)
            .collect()
    }

    fn publish_status(&mut self) {
        self.stats.online = self
            .peers
            .iter()
            .filter(|(_, p)| p.is_online())
            .map(|(id, _)| id.to_string())
            .collect();
        self.stats.syncing = self
            .peers
            .iter()
            .filter(|(_, p)| p.is_ready())
            .map(|(id, _)| id.to_string())
            .collect();
        self.stats.peer_prefs = self
            .peers
            .keys()
            .filter_map(|id| {
                self.core.remote_prefs(id).map(|p| PeerPrefsView {
                    device: id.to_string(),
                    paused: p.paused,
                    off: p.off.clone(),
                    only: p.only.clone(),
                })
            })
            .collect();
        let _ = self.status.send(self.stats.clone());
    }

    /// Loads peer records (and sessions) from the store; forgets removed peers.
    fn load_peers(&mut self) {
        let db = self.store.db();
        let records = match blocking(|| peers::peers(db)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read peers: {e}");
                return;
            }
        };
        let ids: Vec<DeviceId> = records.iter().map(|(id, _)| *id).collect();
        self.peers.retain(|id, _| ids.contains(id));
        for (id, rec) in records {
            if self.peers.contains_key(&id) {
                continue;
            }
            let Ok(public) = rec.public() else { continue };
            if crate::crypto::check_public_key(&public).is_err() {
                tracing::warn!("paired device {id:?} has a low-order key; ignored");
                continue;
            }
            let session = blocking(|| peers::session_bytes(db, &id))
                .ok()
                .flatten()
                .and_then(|b| Session::from_bytes(&b).ok());
            let mark = blocking(|| peers::init_mark(db, &id)).unwrap_or(0);
            self.peers
                .insert(id, PeerLink::new(self.me, public, session, mark, unix_ms()));
        }
    }

    async fn on_transport_event(&mut self, t: &mut Transport, ev: TransportEvent) {
        match ev {
            TransportEvent::Online(id) => {
                if self.peers.contains_key(&id) {
                    let _ = blocking(|| {
                        peers::update_peer(self.store.db(), &id, |r| r.last_seen = peers::now())
                    });
                    self.start_peer(t, id).await;
                }
            }
            TransportEvent::Undeliverable(id, UndeliverableReason::NotAllowed) => {
                // The peer has not allowed us yet (it learns of us from an
                // introduction still on its way): the handshake resend timer
                // tries again; nothing else changes.
                tracing::debug!("{id:?} does not accept us yet");
            }
            TransportEvent::Undeliverable(
                id,
                UndeliverableReason::RecipientBusy | UndeliverableReason::RateLimited,
            ) => {
                // Lost while the peer stays online: no presence change will
                // come, so sync with it starts over on the next retry tick.
                if let Some(p) = self.peers.get_mut(&id) {
                    if p.lost_messages() {
                        self.core.reset_peer(&id);
                        self.busy.insert(id);
                    }
                }
            }
            TransportEvent::Offline(id) | TransportEvent::Undeliverable(id, _) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.offline();
                    self.core.peer_offline(&id);
                }
            }
            TransportEvent::Packet { from, bytes } => {
                self.stats.bytes_received += bytes.len() as u64;
                if let Err(e) = self.on_packet(t, from, &bytes).await {
                    // An envelope that opened but held no valid payload was
                    // still received (as the engine always counted it).
                    if matches!(
                        e,
                        Error::Link(LinkError::Payload(_) | LinkError::NestedFragment)
                    ) {
                        self.stats.envelopes_received += 1;
                    }
                    self.stats.rejected += 1;
                    tracing::debug!("packet from {from:?} rejected: {e}");
                }
            }
            TransportEvent::Closed(_)
            | TransportEvent::Error(_)
            | TransportEvent::RendezvousData(_)
            | TransportEvent::RendezvousPeer(_) => {}
        }
        self.publish_status();
    }

    /// Tells the relay who may reach us (our paired devices) and whose
    /// presence we watch: at connect, and whenever the set changes.
    async fn announce_peers(&mut self, t: &mut Transport) -> Result<()> {
        let ids: Vec<DeviceId> = self.peers.keys().copied().collect();
        t.allow(ids.clone()).await?;
        t.watch(ids).await
    }

    /// Starts sync again with peers whose messages the relay refused as busy
    /// or rate limited (they stayed online, so no presence event restarts it).
    async fn retry_busy(&mut self, t: &mut Transport) {
        for id in std::mem::take(&mut self.busy) {
            if self.peers.get(&id).is_some_and(PeerLink::is_online) {
                self.become_ready(t, id).await;
            }
        }
    }

    /// A peer is online: handshake if needed, else start syncing.
    async fn start_peer(&mut self, t: &mut Transport, id: DeviceId) {
        let now = self.now();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        match p.online(&self.kp, now) {
            Online::Nothing => {}
            Online::Send(init) => self.send_packet(t, id, init).await,
            Online::StartSync => self.send_initial_sync(t, id).await,
        }
    }

    /// Starts syncing with a peer if it can start (online, not yet syncing).
    async fn become_ready(&mut self, t: &mut Transport, id: DeviceId) {
        if self.peers.get_mut(&id).is_some_and(PeerLink::start_sync) {
            self.send_initial_sync(t, id).await;
        }
    }

    /// What a peer gets when sync starts: our name, what we take from it,
    /// the notes queued for it, and a sync offer for every document it
    /// may have (none until it said what it takes: see `on_remote_prefs`).
    async fn send_initial_sync(&mut self, t: &mut Transport, id: DeviceId) {
        let name = blocking(|| peers::device_name(self.store.db())).unwrap_or_default();
        let mut payloads = vec![
            SyncPayload::Hello { name },
            SyncPayload::Prefs(self.core.prefs_for(&id)),
        ];
        let notes = blocking(|| peers::notes(self.store.db(), &id)).unwrap_or_default();
        for (_, bytes) in &notes {
            if let Ok(p) = SyncPayload::decode(bytes) {
                payloads.push(p);
            }
        }
        // The whole removal log: what a lost note failed to say arrives now.
        match blocking(|| peers::group(self.store.db(), self.me)) {
            Ok(group) => payloads.extend(group.removal_log()),
            Err(e) => tracing::warn!("cannot read the device group: {e}"),
        }
        match blocking(|| self.core.on_peer_ready(&id)) {
            Ok(batches) => payloads.extend(batches),
            Err(e) => tracing::warn!("cannot generate sync for {id:?}: {e}"),
        }
        let note_keys: Vec<Vec<u8>> = notes.into_iter().map(|(k, _)| k).collect();
        self.send_payloads(t, id, payloads, &note_keys).await;
    }

    /// Documents changed (here, or from a peer) during the last debounce
    /// window: offer them to every ready peer, except each one's source.
    async fn offer_changed(
        &mut self,
        t: &mut Transport,
        changed: HashMap<(String, crate::doc::DocId), Option<DeviceId>>,
    ) {
        let ready = self.ready_peers();
        for id in ready {
            let docs: Vec<(String, crate::doc::DocId)> = changed
                .iter()
                .filter(|(_, from)| **from != Some(id))
                .map(|(k, _)| k.clone())
                .collect();
            if docs.is_empty() {
                continue;
            }
            match blocking(|| self.core.generate_batches(&id, &docs)) {
                Ok(b) if !b.is_empty() => self.send_payloads(t, id, b, &[]).await,
                Ok(_) => {}
                Err(e) => tracing::warn!("generate failed: {e}"),
            }
        }
    }

    /// Sends queued notes (introductions, removals) to every ready peer.
    async fn flush_notes(&mut self, t: &mut Transport) {
        let ready = self.ready_peers();
        for id in ready {
            let notes = blocking(|| peers::notes(self.store.db(), &id)).unwrap_or_default();
            if notes.is_empty() {
                continue;
            }
            let payloads: Vec<SyncPayload> = notes
                .iter()
                .filter_map(|(_, b)| SyncPayload::decode(b).ok())
                .collect();
            let keys: Vec<Vec<u8>> = notes.into_iter().map(|(k, _)| k).collect();
            self.send_payloads(t, id, payloads, &keys).await;
        }
    }

    /// Sends again every handshake init of an online peer that has gone
    /// unanswered for [`HANDSHAKE_RESEND_AFTER`]: the peer may not have known
    /// us when it came (a pairing completes on the inviter first, and its
    /// init can reach the joiner before the joiner has stored the inviter).
    async fn resend_stale_handshakes(&mut self, t: &mut Transport) {
        let now = self.now();
        let stale: Vec<(DeviceId, Vec<u8>)> = self
            .peers
            .iter_mut()
            .filter_map(|(id, p)| p.on_retry_tick(now).map(|init| (*id, init)))
            .collect();
        for (id, init) in stale {
            self.send_packet(t, id, init).await;
        }
    }

    async fn on_tick(&mut self, t: &mut Transport) {
        self.flush_notes(t).await;
        let ready = self.ready_peers();
        for id in ready {
            // The prefs go again with every resync: a lost one would stop
            // the peer offering anything (unchanged, they cost it nothing).
            let offer = blocking(|| self.core.on_resync_tick(&id));
            self.send_prefs_with(t, id, offer).await;
        }
        // A responder whose first message never came: start over as initiator.
        let now = self.now();
        let kp = &self.kp;
        let fresh: Vec<(DeviceId, Vec<u8>)> = self
            .peers
            .iter_mut()
            .filter_map(|(id, p)| p.on_resync_tick(kp, now).map(|init| (*id, init)))
            .collect();
        for (id, init) in fresh {
            self.send_packet(t, id, init).await;
        }
        self.publish_status();
    }

    async fn resync_all(&mut self, t: &mut Transport) {
        let ready = self.ready_peers();
        for id in ready {
            let docs = blocking(|| self.core.all_docs()).unwrap_or_default();
            if let Ok(b) = blocking(|| self.core.generate_batches(&id, &docs)) {
                self.send_payloads(t, id, b, &[]).await;
            }
        }
    }

    async fn send_packet(&mut self, t: &mut Transport, to: DeviceId, bytes: Vec<u8>) {
        self.stats.bytes_sent += bytes.len() as u64;
        if let Err(e) = t.send(to, bytes).await {
            tracing::debug!("send to {to:?} failed: {e}");
        }
    }

    /// Seals payloads (the link fragments large ones), persists the advanced
    /// session (and removes sent notes) in one batch, commits it, then sends.
    async fn send_payloads(
        &mut self,
        t: &mut Transport,
        to: DeviceId,
        payloads: Vec<SyncPayload>,
        sent_notes: &[Vec<u8>],
    ) {
        let Some(p) = self.peers.get_mut(&to) else {
            return;
        };
        let sealed = match p.seal(&payloads) {
            Ok(sealed) => sealed,
            Err(SealError::NoSession) => return,
            Err(e @ SealError::CannotSendYet) => {
                // Not syncing any more: the next resync tick's rule for
                // silent responders handshakes afresh.
                tracing::debug!("{to:?}: {e}; handshaking again");
                return;
            }
        };
        for e in &sealed.dropped {
            tracing::warn!("{e}; dropped");
        }
        if let Some(e) = &sealed.stopped {
            tracing::warn!("seal for {to:?} failed: {e}");
        }
        let state = sealed.update.bytes();
        let db = self.store.db();
        let persisted = blocking(|| {
            let mut b = db.batch();
            peers::stage_session(db, &mut b, &to, &state);
            for k in sent_notes {
                peers::stage_remove_note(db, &mut b, k);
            }
            // Fsynced even under `--durability buffered`: the state that
            // sealed these envelopes must survive a power cut once they leave.
            db.commit_fsync(b)
        });
        if let Err(e) = persisted {
            // Nothing leaves unless the ratchet state that sealed it is durable.
            tracing::warn!("cannot persist session for {to:?}: {e}");
            return;
        }
        if let Some(p) = self.peers.get_mut(&to) {
            p.commit(sealed.update);
        }
        for packet in sealed.packets {
            self.stats.envelopes_sent += 1;
            self.send_packet(t, to, packet).await;
        }
    }

    async fn on_packet(&mut self, t: &mut Transport, from: DeviceId, bytes: &[u8]) -> Result<()> {
        let now = self.now();
        let Some(p) = self.peers.get_mut(&from) else {
            return Err(Error::UnknownPeer);
        };
        match p.on_packet(&self.kp, bytes, now)? {
            Received::Nothing => Ok(()),
            Received::Send(packet) => {
                self.send_packet(t, from, packet).await;
                Ok(())
            }
            Received::Answered { update, response } => {
                self.commit_session(from, update)?;
                self.send_packet(t, from, response).await;
                // The initiator speaks first (it holds the first sending
                // chain); we start syncing when its first envelope opens.
                Ok(())
            }
            Received::Established { update } => {
                self.commit_session(from, update)?;
                self.become_ready(t, from).await;
                Ok(())
            }
            Received::Opened {
                update,
                payload,
                start_sync,
            } => {
                self.stats.envelopes_received += 1;
                match payload {
                    // A fragment of a payload not yet whole: only the ratchet advanced.
                    None => self.commit_session(from, update),
                    Some(payload) => self.on_payload(t, from, update, payload, start_sync).await,
                }
            }
        }
    }

    /// A whole payload opened with `update`: its effects and the session
    /// go to disk in one batch, then the session is committed.
    async fn on_payload(
        &mut self,
        t: &mut Transport,
        from: DeviceId,
        update: SessionUpdate,
        payload: SyncPayload,
        start_sync: bool,
    ) -> Result<()> {
        let session_bytes = update.bytes();
        let db = self.store.db();
        match payload {
            SyncPayload::Batch(items) => {
                let applied = blocking(|| {
                    self.core.apply_batch(&from, items, |b| {
                        peers::stage_session(db, b, &from, &session_bytes)
                    })
                })?;
                self.install_session(from, update);
                self.stats.filtered += applied.filtered as u64;
                if start_sync {
                    self.become_ready(t, from).await;
                }
                let replies = blocking(|| self.core.generate_batches(&from, &applied.docs))?;
                if !replies.is_empty() {
                    self.send_payloads(t, from, replies, &[]).await;
                }
                return Ok(());
            }
            SyncPayload::Introduce(list) => {
                let change = blocking(|| -> Result<Change> {
                    let _group = self.store.membership_lock();
                    let change = peers::group(db, self.me)?.introduce(&from, &list, peers::now());
                    self.commit_membership(&from, &session_bytes, change)
                })?;
                self.install_session(from, update);
                self.stats.rejected += u64::from(change.refused);
                if !change.added.is_empty() {
                    self.load_peers();
                    let _ = self.announce_peers(t).await;
                }
            }
            SyncPayload::Removal(entry) => {
                let change = blocking(|| -> Result<Change> {
                    let _group = self.store.membership_lock();
                    let change = peers::group(db, self.me)?.on_removal(&from, &entry, peers::now());
                    self.commit_membership(&from, &session_bytes, change)
                })?;
                self.after_removal(t, from, update, change).await;
            }
            SyncPayload::Removed(id) => {
                let change = blocking(|| -> Result<Change> {
                    let _group = self.store.membership_lock();
                    let change =
                        peers::group(db, self.me)?.on_legacy_removed(&from, &id, peers::now());
                    self.commit_membership(&from, &session_bytes, change)
                })?;
                self.after_removal(t, from, update, change).await;
            }
            SyncPayload::Hello { name } => {
                blocking(|| -> Result<()> {
                    let mut b = db.batch();
                    peers::stage_session(db, &mut b, &from, &session_bytes);
                    db.commit(b)?;
                    peers::update_peer(db, &from, |r| r.name = name)
                })?;
                self.install_session(from, update);
                // A new session of a peer this side thought was still in
                // one: it needs this side's prefs again (a starting sync
                // sends them anyway).
                if self.core.on_peer_hello(&from) && !start_sync {
                    let prefs = vec![SyncPayload::Prefs(self.core.prefs_for(&from))];
                    self.send_payloads(t, from, prefs, &[]).await;
                }
            }
            SyncPayload::Prefs(prefs) => {
                self.commit_session(from, update)?;
                if start_sync {
                    self.become_ready(t, from).await;
                }
                // What it takes is known now: it is offered that.
                let offer = blocking(|| self.core.on_remote_prefs(&from, prefs))?;
                if !offer.is_empty() {
                    self.send_payloads(t, from, offer, &[]).await;
                }
                self.publish_status();
                return Ok(());
            }
            // The link hands over whole payloads only.
            SyncPayload::Fragment { .. } => return Ok(()),
        }
        if start_sync {
            self.become_ready(t, from).await;
        }
        Ok(())
    }

    /// Commits a membership change with the session that carried it (unless
    /// the change removed the sender, whose session goes with it).
    fn commit_membership(
        &self,
        from: &DeviceId,
        session: &[u8],
        decided: std::result::Result<Change, MembershipError>,
    ) -> Result<Change> {
        // A refused entry changes nothing but the session that opened it
        // (committed, so the ratchet moves on); it counts as rejected.
        let mut change = decided.unwrap_or_else(|e| {
            tracing::debug!("membership entry from {from:?} refused: {e}");
            Change {
                refused: true,
                ..Change::default()
            }
        });
        if !change.removed.contains(from) {
            layout::stage_session(&mut change.writes, from, session);
        }
        let db = self.store.db();
        let mut b = db.batch();
        db.stage(&mut b, std::mem::take(&mut change.writes))?;
        db.commit(b)?;
        Ok(change)
    }

    /// After a removal was committed: devices that left are forgotten (the
    /// relay stops letting them reach us), and the entry goes on to every
    /// ready peer at once (the others get it from the queued notes later).
    async fn after_removal(
        &mut self,
        t: &mut Transport,
        from: DeviceId,
        update: SessionUpdate,
        change: Change,
    ) {
        self.stats.rejected += u64::from(change.refused);
        if !change.removed.contains(&from) {
            self.install_session(from, update);
        }
        if change.removed.is_empty() {
            return;
        }
        for id in &change.removed {
            self.core.peer_offline(id);
        }
        self.load_peers();
        let _ = self.announce_peers(t).await;
        self.flush_notes(t).await;
    }

    /// Installs a session update whose bytes were persisted.
    fn install_session(&mut self, peer: DeviceId, update: SessionUpdate) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.commit(update);
        }
    }

    /// Persists a session update on its own, then installs it.
    fn commit_session(&mut self, peer: DeviceId, update: SessionUpdate) -> Result<()> {
        let db = self.store.db();
        let bytes = update.bytes();
        let mark = update.init_mark();
        blocking(|| {
            let mut b = db.batch();
            peers::stage_session(db, &mut b, &peer, &bytes);
            if let Some(mark) = mark {
                peers::stage_init_mark(db, &mut b, &peer, mark);
            }
            db.commit(b)
        })?;
        self.install_session(peer, update);
        Ok(())
    }
}

/// The sync engine of a store that starts syncing once it knows a relay
/// (after pairing, or `--relay`): shared by the store daemon and peer-mode
/// clients, which both pair at run time.
pub struct EngineSlot {
    /// The store to sync.
    store: Store,
    /// Resync interval for the engine when it starts.
    resync_interval: Duration,
    /// The engine, once started.
    engine: tokio::sync::Mutex<Option<SyncEngine>>,
}

impl EngineSlot {
    /// An empty slot for `store`.
    pub fn new(store: Store, resync_interval: Duration) -> Self {
        Self {
            store,
            resync_interval,
            engine: tokio::sync::Mutex::new(None),
        }
    }

    /// Starts the engine if a relay is configured and it is not running;
    /// otherwise tells the running engine the set of peers changed.
    pub async fn ensure(&self) -> Result<()> {
        let mut engine = self.engine.lock().await;
        if let Some(e) = engine.as_ref() {
            e.peers_changed();
        } else if let Some(url) = peers::relay_url(self.store.db())? {
            *engine = Some(SyncEngine::start_with(
                self.store.clone(),
                EngineConfig {
                    relay_url: url,
                    resync_interval: self.resync_interval,
                },
            )?);
        }
        Ok(())
    }

    /// Tells the running engine, if any, that this store's sync choices
    /// changed (an engine that starts later reads them itself).
    pub async fn prefs_changed(&self) {
        if let Some(e) = self.engine.lock().await.as_ref() {
            e.prefs_changed();
        }
    }

    /// The engine's status, if it runs.
    pub async fn status(&self) -> Option<EngineStatus> {
        self.engine.lock().await.as_ref().map(|e| e.status())
    }

    /// Stops the engine, if it runs, and waits for it.
    pub async fn shutdown(&self) {
        if let Some(e) = self.engine.lock().await.take() {
            e.shutdown().await;
        }
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 before it): the
/// stamps of this device's handshake inits start from it.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
