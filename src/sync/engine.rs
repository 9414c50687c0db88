//! The sync engine: the I/O shell around [`SyncCore`]. One tokio task per
//! store owns the relay connection, the Double Ratchet sessions with every
//! paired device and the pending handshakes, and turns relay events and local
//! changes into sealed envelopes.
//!
//! Per peer: when the relay says it is online, establish a session if there is
//! none (handshake; both may start, the tie-break in `crypto::handshake`
//! decides), then run Automerge sync for every document. Each outgoing batch
//! is sealed and the advanced ratchet state is persisted *before* the envelope
//! leaves; each incoming envelope is opened on a copy of the session, and the
//! copy is persisted in the same atomic batch as the changes it carried.
//!
//! Blocking work (fjall, Automerge) runs under `block_in_place`, so the engine
//! needs tokio's multi-thread runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use x25519_dalek::PublicKey;

use super::core::SyncCore;
use super::peers;
use super::transport::{Transport, TransportEvent};
use super::wire::{DevicePacket, PeerInfo, SyncPayload};
use crate::crypto::handshake::{self, PendingHandshake};
use crate::crypto::ratchet::Session;
use crate::crypto::{DeviceId, DeviceKeypair};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::wire::relay_frame::UndeliverableReason;

use masq_core::sync::fragments::{Fragmenter, Reassembler};
pub use masq_core::sync::fragments::{MAX_ENVELOPE_PLAINTEXT, MAX_FRAGMENTS};
/// The engine checks for stale inits every half of this.
pub use masq_core::sync::handshake_rules::HANDSHAKE_RESEND_AFTER;
use masq_core::sync::handshake_rules::{self as rules, CrossingInit};
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
        let stop = CancellationToken::new();
        let (status_tx, status_rx) = watch::channel(EngineStatus::default());
        let engine = Engine {
            me: kp.device_id(),
            kp,
            core: SyncCore::new(store.clone()),
            store,
            peers: HashMap::new(),
            fragments: HashMap::new(),
            fragmenter: Fragmenter::new(),
            epoch: std::time::Instant::now(),
            status: status_tx,
            stats: EngineStatus::default(),
            busy: Default::default(),
        };
        let task = tokio::spawn(engine.run(config, peers_changed.clone(), stop.clone()));
        Ok(Self {
            peers_changed,
            stop,
            status: status_rx,
            task: Some(task),
        })
    }

    /// The latest status.
    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status update.
    pub fn watch_status(&self) -> watch::Receiver<EngineStatus> {
        self.status.clone()
    }

    /// Tells the engine the set of peers changed (after pairing or removal).
    pub fn peers_changed(&self) {
        self.peers_changed.notify_one();
    }

    /// Stops the engine and waits for its task.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Per-peer connection state (in memory; the session is persisted).
struct PeerState {
    /// Its static public key.
    public: PublicKey,
    /// The relay reports it online.
    online: bool,
    /// Established Double Ratchet session.
    session: Option<Session>,
    /// Our handshake in flight, with its first message and when it was sent
    /// (time since [`Engine::epoch`]; re-sent by the rules of
    /// `masq_core::sync::handshake_rules`).
    pending: Option<(PendingHandshake, Vec<u8>, Duration)>,
    /// Session usable for sending and the initial sync was offered.
    ready: bool,
}

struct Engine {
    store: Store,
    kp: DeviceKeypair,
    me: DeviceId,
    core: SyncCore,
    peers: HashMap<DeviceId, PeerState>,
    /// Per peer, the fragmented payload being put back together.
    fragments: HashMap<DeviceId, Reassembler>,
    /// Numbers the payloads we fragment.
    fragmenter: Fragmenter,
    /// The engine's clock origin: the core's rules take time as a duration
    /// since it.
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
        stop: CancellationToken,
    ) {
        let relay_url = config.relay_url.clone();
        let mut delay = RECONNECT_MIN;
        let mut changes = self.store.subscribe_changes();
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
                    _ = stop.cancelled() => break true,
                }
            };
            transport.close().await;
            self.stats.relay_connected = false;
            self.busy.clear();
            for (id, p) in self.peers.iter_mut() {
                p.online = false;
                p.ready = false;
                p.pending = None;
                self.core.reset_peer(id);
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

    fn publish_status(&mut self) {
        self.stats.online = self
            .peers
            .iter()
            .filter(|(_, p)| p.online)
            .map(|(id, _)| id.to_string())
            .collect();
        self.stats.syncing = self
            .peers
            .iter()
            .filter(|(_, p)| p.ready)
            .map(|(id, _)| id.to_string())
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
            self.peers.insert(
                id,
                PeerState {
                    public,
                    online: false,
                    session,
                    pending: None,
                    ready: false,
                },
            );
        }
    }

    async fn on_transport_event(&mut self, t: &mut Transport, ev: TransportEvent) {
        match ev {
            TransportEvent::Online(id) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.online = true;
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
                    if p.ready {
                        p.ready = false;
                        self.core.reset_peer(&id);
                        self.fragments.remove(&id);
                        self.busy.insert(id);
                    }
                }
            }
            TransportEvent::Offline(id) | TransportEvent::Undeliverable(id, _) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.online = false;
                    p.ready = false;
                    p.pending = None;
                    self.core.reset_peer(&id);
                    self.fragments.remove(&id);
                }
            }
            TransportEvent::Packet { from, bytes } => {
                self.stats.bytes_received += bytes.len() as u64;
                if let Err(e) = self.on_packet(t, from, &bytes).await {
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
            if self.peers.get(&id).map(|p| p.online).unwrap_or(false) {
                self.become_ready(t, id).await;
            }
        }
    }

    /// A peer is online: handshake if needed, else start syncing.
    async fn start_peer(&mut self, t: &mut Transport, id: DeviceId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.session.is_some() {
            self.become_ready(t, id).await;
        } else if p.pending.is_none() {
            let (pending, init) = handshake::initiate(&self.kp, &p.public);
            p.pending = Some((pending, init.clone(), self.epoch.elapsed()));
            self.send_raw(t, id, DevicePacket::HandshakeInit(init))
                .await;
        }
    }

    async fn become_ready(&mut self, t: &mut Transport, id: DeviceId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.ready || !p.online {
            return;
        }
        p.ready = true;
        let name = blocking(|| peers::device_name(self.store.db())).unwrap_or_default();
        let mut payloads = vec![SyncPayload::Hello { name }];
        let notes = blocking(|| peers::notes(self.store.db(), &id)).unwrap_or_default();
        for (_, bytes) in &notes {
            if let Ok(p) = SyncPayload::decode(bytes) {
                payloads.push(p);
            }
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
        let ready: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.ready)
            .map(|(id, _)| *id)
            .collect();
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
        let ready: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.ready)
            .map(|(id, _)| *id)
            .collect();
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

    /// Periodic recovery: re-send stale handshakes, and re-offer every document
    /// to every ready peer from the persisted sync states.
    /// Sends again every handshake init of an online peer that has gone
    /// unanswered for [`HANDSHAKE_RESEND_AFTER`]: the peer may not have known
    /// us when it came (a pairing completes on the inviter first, and its
    /// init can reach the joiner before the joiner has stored the inviter).
    async fn resend_stale_handshakes(&mut self, t: &mut Transport) {
        let now = self.now();
        let stale: Vec<(DeviceId, Vec<u8>)> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| p.online)
            .filter_map(|(id, p)| match p.pending.as_mut() {
                Some((_, init, at)) if rules::init_is_stale(*at, now) => {
                    *at = now;
                    Some((*id, init.clone()))
                }
                _ => None,
            })
            .collect();
        for (id, init) in stale {
            self.send_raw(t, id, DevicePacket::HandshakeInit(init))
                .await;
        }
    }

    async fn on_tick(&mut self, t: &mut Transport) {
        self.flush_notes(t).await;
        let ready: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.ready)
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            match blocking(|| self.core.on_resync_tick(&id)) {
                Ok(b) if !b.is_empty() => self.send_payloads(t, id, b, &[]).await,
                Ok(_) => {}
                Err(e) => tracing::warn!("resync for {id:?} failed: {e}"),
            }
        }
        // A responder whose first message never came: start over as initiator.
        let silent: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.session.as_ref().is_some_and(|s| {
                    rules::responder_is_silent(p.online, p.ready, p.pending.is_some(), s.can_send())
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            if let Some(p) = self.peers.get_mut(&id) {
                p.session = None;
            }
            self.start_peer(t, id).await;
        }
        self.publish_status();
    }

    async fn resync_all(&mut self, t: &mut Transport) {
        let ready: Vec<DeviceId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.ready)
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let docs = blocking(|| self.core.all_docs()).unwrap_or_default();
            if let Ok(b) = blocking(|| self.core.generate_batches(&id, &docs)) {
                self.send_payloads(t, id, b, &[]).await;
            }
        }
    }

    async fn send_raw(&mut self, t: &mut Transport, to: DeviceId, packet: DevicePacket) {
        let bytes = packet.encode();
        self.stats.bytes_sent += bytes.len() as u64;
        if let Err(e) = t.send(to, bytes).await {
            tracing::debug!("send to {to:?} failed: {e}");
        }
    }

    /// Seals payloads (fragmenting large ones), persists the advanced session
    /// (and removes sent notes) in one batch, then sends.
    async fn send_payloads(
        &mut self,
        t: &mut Transport,
        to: DeviceId,
        payloads: Vec<SyncPayload>,
        sent_notes: &[Vec<u8>],
    ) {
        let mut plaintexts = Vec::new();
        for p in payloads {
            match self.fragmenter.split(&p) {
                Ok(parts) => plaintexts.extend(parts),
                Err(e) => tracing::warn!("{e}; dropped"),
            }
        }
        let Some(p) = self.peers.get_mut(&to) else {
            return;
        };
        let Some(session) = p.session.as_mut() else {
            return;
        };
        if p.ready && !session.can_send() {
            // A responder session whose initiator's first message never came
            // (it was lost, or the initiator moved on to another session),
            // yet sync was started: nothing can be sealed until it comes,
            // maybe never. Not ready any more, so the next tick's rule for
            // silent responders drops the session and handshakes afresh,
            // instead of failing every send from now on.
            tracing::debug!("{to:?}: our responder session cannot send yet; handshaking again");
            p.ready = false;
            return;
        }
        let mut envelopes = Vec::with_capacity(plaintexts.len());
        for pt in &plaintexts {
            match session.seal(pt) {
                Ok(env) => envelopes.push(env),
                Err(e) => {
                    tracing::warn!("seal for {to:?} failed: {e}");
                    break;
                }
            }
        }
        let state = session.to_bytes();
        let db = self.store.db();
        let persisted = blocking(|| {
            let mut b = db.batch();
            peers::stage_session(db, &mut b, &to, &state);
            for k in sent_notes {
                peers::stage_remove_note(db, &mut b, k);
            }
            db.commit(b)
        });
        if let Err(e) = persisted {
            // Nothing leaves unless the ratchet state that sealed it is durable.
            tracing::warn!("cannot persist session for {to:?}: {e}");
            return;
        }
        for env in envelopes {
            self.stats.envelopes_sent += 1;
            self.send_raw(t, to, DevicePacket::Sealed(env)).await;
        }
    }

    async fn on_packet(&mut self, t: &mut Transport, from: DeviceId, bytes: &[u8]) -> Result<()> {
        let packet =
            DevicePacket::decode(bytes).map_err(|e| Error::BadOp(format!("packet: {e}")))?;
        if !self.peers.contains_key(&from) {
            return Err(Error::BadOp(
                "packet from a device that is not paired".into(),
            ));
        }
        match packet {
            DevicePacket::HandshakeInit(init) => self.on_handshake_init(t, from, &init).await,
            DevicePacket::HandshakeResponse(resp) => {
                let db = self.store.db();
                let Some(p) = self.peers.get_mut(&from) else {
                    return Ok(());
                };
                let Some((pending, _, _)) = p.pending.take() else {
                    return Err(Error::BadOp(
                        "handshake response without a handshake".into(),
                    ));
                };
                let session = pending
                    .finish(&resp)
                    .map_err(|e| Error::BadOp(format!("handshake: {e}")))?;
                let bytes = session.to_bytes();
                blocking(|| {
                    let mut b = db.batch();
                    peers::stage_session(db, &mut b, &from, &bytes);
                    db.commit(b)
                })?;
                p.session = Some(session);
                p.ready = false;
                self.become_ready(t, from).await;
                Ok(())
            }
            DevicePacket::Sealed(env) => self.on_sealed(t, from, &env).await,
        }
    }

    async fn on_handshake_init(
        &mut self,
        t: &mut Transport,
        from: DeviceId,
        init: &[u8],
    ) -> Result<()> {
        let me = self.me;
        let now = self.now();
        let db = self.store.db();
        let Some(p) = self.peers.get_mut(&from) else {
            return Ok(());
        };
        if let Some((_, our_init, sent_at)) = &mut p.pending {
            match rules::on_crossing_init(&me, &from, *sent_at, now) {
                CrossingInit::AnswerTheirs => {}
                CrossingInit::KeepOurs { resend: false } => return Ok(()),
                CrossingInit::KeepOurs { resend: true } => {
                    *sent_at = now;
                    let again = our_init.clone();
                    self.send_raw(t, from, DevicePacket::HandshakeInit(again))
                        .await;
                    return Ok(());
                }
            }
        }
        let (session, response) = handshake::respond(&self.kp, &p.public, init)
            .map_err(|e| Error::BadOp(format!("handshake: {e}")))?;
        let bytes = session.to_bytes();
        blocking(|| {
            let mut b = db.batch();
            peers::stage_session(db, &mut b, &from, &bytes);
            db.commit(b)
        })?;
        p.pending = None;
        p.session = Some(session);
        p.ready = false;
        self.send_raw(t, from, DevicePacket::HandshakeResponse(response))
            .await;
        // The initiator speaks first (it holds the first sending chain); we become
        // ready when its first envelope arrives.
        Ok(())
    }

    async fn on_sealed(&mut self, t: &mut Transport, from: DeviceId, env: &[u8]) -> Result<()> {
        let Some(p) = self.peers.get_mut(&from) else {
            return Ok(());
        };
        let Some(session) = p.session.as_ref() else {
            return Err(Error::BadOp("sealed envelope without a session".into()));
        };
        let mut next = session.clone();
        let plaintext = next
            .open(env)
            .map_err(|e| Error::BadOp(format!("envelope: {e}")))?;
        self.stats.envelopes_received += 1;
        let payload =
            SyncPayload::decode(&plaintext).map_err(|e| Error::BadOp(format!("payload: {e}")))?;
        let payload = match payload {
            SyncPayload::Fragment {
                id,
                index,
                total,
                bytes,
            } => match self
                .fragments
                .entry(from)
                .or_default()
                .push(id, index, total, bytes)
            {
                Some(full) => {
                    SyncPayload::decode(&full).map_err(|e| Error::BadOp(format!("payload: {e}")))?
                }
                None => {
                    // Not complete yet: only the ratchet advanced.
                    self.commit_session(from, next)?;
                    return Ok(());
                }
            },
            other => other,
        };
        let was_ready = self.peers.get(&from).map(|p| p.ready).unwrap_or(false);
        let session_bytes = next.to_bytes();
        let db = self.store.db();
        match payload {
            SyncPayload::Batch(items) => {
                let applied = blocking(|| {
                    self.core.apply_batch(&from, items, |b| {
                        peers::stage_session(db, b, &from, &session_bytes)
                    })
                })?;
                self.install_session(from, next);
                if !was_ready {
                    self.become_ready(t, from).await;
                }
                let replies = blocking(|| self.core.generate_batches(&from, &applied.docs))?;
                if !replies.is_empty() {
                    self.send_payloads(t, from, replies, &[]).await;
                }
                return Ok(());
            }
            SyncPayload::Introduce(list) => {
                let added = blocking(|| -> Result<Vec<DeviceId>> {
                    let mut b = db.batch();
                    let mut added = Vec::new();
                    for PeerInfo { public_key, name } in list {
                        let public = PublicKey::from(public_key);
                        let id = DeviceId::from_public(&public);
                        if crate::crypto::check_public_key(&public).is_err() {
                            tracing::debug!("introduction of a low-order key ignored");
                            continue;
                        }
                        if id == self.me
                            || peers::peer(db, &id)?.is_some()
                            || peers::is_removed(db, &id)?
                        {
                            continue;
                        }
                        peers::stage_peer(db, &mut b, &public, &name)?;
                        added.push(id);
                    }
                    peers::stage_session(db, &mut b, &from, &session_bytes);
                    db.commit(b)?;
                    Ok(added)
                })?;
                self.install_session(from, next);
                if !added.is_empty() {
                    self.load_peers();
                    let _ = self.announce_peers(t).await;
                }
            }
            SyncPayload::Removed(id) => {
                let removed = DeviceId(id);
                blocking(|| -> Result<()> {
                    let mut b = db.batch();
                    if removed == self.me {
                        // We were removed from this user's devices: forget the sender.
                        peers::stage_remove_peer(db, &mut b, &from)?;
                    } else {
                        peers::stage_remove_peer(db, &mut b, &removed)?;
                        peers::stage_session(db, &mut b, &from, &session_bytes);
                    }
                    db.commit(b)
                })?;
                self.install_session(from, next);
                self.load_peers();
                let _ = self.announce_peers(t).await;
            }
            SyncPayload::Hello { name } => {
                blocking(|| -> Result<()> {
                    let mut b = db.batch();
                    peers::stage_session(db, &mut b, &from, &session_bytes);
                    db.commit(b)?;
                    peers::update_peer(db, &from, |r| r.name = name)
                })?;
                self.install_session(from, next);
            }
            SyncPayload::Fragment { .. } => return Err(Error::BadOp("nested fragment".into())),
        }
        if !was_ready {
            self.become_ready(t, from).await;
        }
        Ok(())
    }

    fn install_session(&mut self, peer: DeviceId, session: Session) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.session = Some(session);
        }
    }

    fn commit_session(&mut self, peer: DeviceId, session: Session) -> Result<()> {
        let db = self.store.db();
        let bytes = session.to_bytes();
        blocking(|| {
            let mut b = db.batch();
            peers::stage_session(db, &mut b, &peer, &bytes);
            db.commit(b)
        })?;
        self.install_session(peer, session);
        Ok(())
    }
}

/// Shared handle type for callers that keep an engine beside other state.
pub type SharedEngine = Arc<SyncEngine>;

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
