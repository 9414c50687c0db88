//! The page's sync engine, sans I/O: the browser's counterpart of the
//! native engine (`src/sync/engine.rs`), over the same core state machines
//! ([`PeerLink`] per paired device: handshakes, Double Ratchet sessions,
//! sealing, fragments, resend timers; [`DocStates`]: Automerge's sync state
//! per peer and document).
//!
//! The page owns the relay's WebSocket and the clock: it hands in the
//! relay's frames ([`PageSync::on_relay_frame`]), the socket's opening and
//! closing, a timer tick ([`PageSync::on_tick`]) and, after each batch of
//! the app's requests, the order to offer what changed ([`PageSync::flush`]).
//! Out come relay frames to send ([`PageSync::take_frames`]) and, in the
//! store's outbox, the records to commit.
//!
//! The one rule (as natively): **persist, then send.** Every step that
//! advances a ratchet stages the new session in the store's outbox (with the
//! changes a received payload carried, in the same write set) and commits
//! it to its link in memory; its frames wait in [`PageSync::take_frames`]
//! until the page has committed the outbox. If that commit fails, the page
//! reopens the store from IndexedDB, and this engine with it (memory was
//! ahead of the disk), so nothing ever left under an unpersisted state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::peer_store::PeerStore;
use crate::relay_conn::{ConnError, RelayConn};
use masq_core::api::ApiError;
use masq_core::crypto::{check_public_key, DeviceId, DeviceKeypair, Session};
use masq_core::doc::DocId;
use masq_core::layout::meta::{
    self as layout, note_prefix, peer_key, peer_of_key, session_key, PeerRecord, IDENTITY, NAME,
    PEER, RELAY_URL,
};
use masq_core::records::{Table, WriteSet};
use masq_core::sync::batching::pack_batches;
use masq_core::sync::doc_states::DocStates;
use masq_core::sync::link::{Online, PeerLink, Received, SealError, SessionUpdate};
use masq_core::sync::membership::{Change, Group, MembershipError};
use masq_core::sync::prefs::{LocalPrefs, SyncGate};
use masq_core::wire::device::{DocMessage, SyncPayload};
use masq_core::wire::relay_frame::{Frame, UndeliverableReason};

/// How often every ready peer is offered every document again from the
/// persisted sync states (the native engine's `RESYNC_INTERVAL`): Automerge's
/// sync assumes a reliable stream, and the relay may drop.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// The name a page's device shows until the page gives one.
pub const DEFAULT_NAME: &str = "masq web app";

/// What the engine reports about itself (the page's `status` answer).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncStats {
    /// Connected and authenticated to the relay.
    pub relay_connected: bool,
    /// Envelopes sealed and handed to the page to send.
    pub envelopes_sent: u64,
    /// Envelopes received and opened.
    pub envelopes_received: u64,
    /// Bytes handed to the page for the relay.
    pub bytes_sent: u64,
    /// Bytes the relay delivered.
    pub bytes_received: u64,
    /// Packets refused (bad, unknown sender, replay, ...).
    pub rejected: u64,
    /// Sync messages for other apps than the page's, dropped.
    pub other_apps: u64,
    /// Sync messages dropped because their app does not sync with the
    /// sender (the page's own choices, kept as natively).
    pub filtered: u64,
    /// The last error the relay or a peer's packet caused, if any.
    pub last_error: Option<String>,
    /// The engine's last [`RECENT_EVENTS`] steps, oldest first (what a
    /// developer asks when sync seems stuck: who came online, what was
    /// sealed and opened, what was refused).
    pub recent: std::collections::VecDeque<String>,
}

/// How many steps [`SyncStats::recent`] keeps.
pub const RECENT_EVENTS: usize = 64;

impl SyncStats {
    fn note(&mut self, what: String) {
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(what);
    }
}

/// One page's device: its identity, its peers, and the relay connection's
/// protocol state.
pub struct PageSync {
    /// This device's key pair.
    kp: DeviceKeypair,
    /// Its id.
    me: DeviceId,
    /// The protocol state with each paired device.
    links: BTreeMap<DeviceId, PeerLink>,
    /// Automerge sync state per (peer, app, document).
    states: DocStates,
    /// The relay connection's opening (`None`: no connection).
    conn: Option<RelayConn>,
    /// Relay frames to send once the outbox is committed.
    frames: Vec<Vec<u8>>,
    /// The next message id for a `Send` frame.
    next_msg_id: u64,
    /// When every document was last offered again ([`RESYNC_INTERVAL`]).
    last_resync: Duration,
    /// Online peers whose messages the relay refused as busy or rate
    /// limited: sync with them starts over on the next tick.
    busy: BTreeSet<DeviceId>,
    /// Which documents may flow with which peer: a page holds its one
    /// app, and tells every peer so (`only`), so no device ever offers it
    /// another app's data; it offers nothing before a peer said what it
    /// takes (`masq_core::sync::prefs`, the native rules).
    gate: SyncGate,
    /// Counters.
    stats: SyncStats,
}

/// A sync step failed on this page's side (its storage): the page reopens.
pub type SyncResult<T> = Result<T, ApiError>;

impl PageSync {
    /// The engine of `store`'s device: its identity is loaded, or made and
    /// put in the outbox (committed with the next batch, before any frame
    /// that uses it leaves).
    pub fn open(store: &PeerStore) -> Self {
        let stored = store
            .meta(IDENTITY)
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok());
        let kp = match stored {
            Some(secret) => DeviceKeypair::from_secret_bytes(secret),
            None => {
                let kp = DeviceKeypair::generate();
                let mut w = WriteSet::new();
                w.put(Table::Meta, IDENTITY.to_vec(), kp.secret_bytes().to_vec());
                store.put_records(w);
                kp
            }
        };
        let mut sync = PageSync {
            me: kp.device_id(),
            kp,
            links: BTreeMap::new(),
            states: DocStates::new(),
            conn: None,
            frames: Vec::new(),
            next_msg_id: 1,
            last_resync: Duration::ZERO,
            busy: BTreeSet::new(),
            gate: SyncGate::new(local_prefs(store)),
            stats: SyncStats::default(),
        };
        sync.load_peers(store);
        sync
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.me
    }

    /// This device's key pair.
    pub fn keypair(&self) -> &DeviceKeypair {
        &self.kp
    }

    /// The counters.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Whether `peer` is online and syncing.
    pub fn is_ready(&self, peer: &DeviceId) -> bool {
        self.links.get(peer).is_some_and(PeerLink::is_ready)
    }

    /// This page's own sync choices.
    pub fn local_prefs(&self) -> &LocalPrefs {
        self.gate.local()
    }

    /// What `peer` said it takes, in its current session.
    pub fn remote_prefs(&self, peer: &DeviceId) -> Option<&masq_core::wire::device::PeerPrefs> {
        self.gate.remote(peer)
    }

    /// Whether `peer` is online.
    pub fn is_online(&self, peer: &DeviceId) -> bool {
        self.links.get(peer).is_some_and(PeerLink::is_online)
    }

    /// Relay frames to send now (the outbox they depend on is committed).
    pub fn take_frames(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.frames)
    }

    fn push(&mut self, frame: Frame) {
        let bytes = frame.encode();
        self.stats.bytes_sent += bytes.len() as u64;
        self.frames.push(bytes);
    }

    fn send_packet(&mut self, to: DeviceId, payload: Vec<u8>) {
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        self.push(Frame::Send {
            msg_id,
            to,
            payload,
        });
    }

    /// (Re)reads the paired devices from the store: new ones get a link,
    /// removed ones lose theirs.
    pub fn load_peers(&mut self, store: &PeerStore) {
        let records = peers(store);
        self.links
            .retain(|id, _| records.iter().any(|(r, _)| r == id));
        for (id, rec) in records {
            if self.links.contains_key(&id) {
                continue;
            }
            let Ok(public) = rec.public() else { continue };
            if check_public_key(&public).is_err() {
                continue;
            }
            let session = store
                .meta(&session_key(&id))
                .and_then(|b| Session::from_bytes(&b).ok());
            let mark = store
                .meta(&layout::init_mark_key(&id))
                .map_or(0, |b| layout::decode_init_mark(&b));
            // The page's clock (Date.now() of the request being served), in ms.
            let now_ms = u64::try_from(store.now_secs())
                .unwrap_or(0)
                .saturating_mul(1000);
            self.links
                .insert(id, PeerLink::new(self.me, public, session, mark, now_ms));
        }
    }

    /// The page's clock (its `now`, ms since the Unix epoch): the links'
    /// next inits are stamped at least from it (they may have been made
    /// when the store opened, before the first request's clock).
    fn observe_wall_clock(&mut self, now: Duration) {
        let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        for link in self.links.values_mut() {
            link.observe_wall_clock(ms);
        }
    }

    /// Tells the relay who may reach us and whose presence we watch.
    fn announce_peers(&mut self) {
        if !self.conn.as_ref().is_some_and(RelayConn::is_ready) {
            return;
        }
        let ids: Vec<DeviceId> = self.links.keys().copied().collect();
        self.push(Frame::Allow(ids.clone()));
        self.push(Frame::Subscribe(ids));
    }

    /// The set of peers changed (pairing, removal): links follow, and the
    /// relay is told.
    pub fn peers_changed(&mut self, store: &PeerStore) {
        self.load_peers(store);
        self.announce_peers();
        for id in self.ready_peers() {
            let notes = notes(store, &id);
            if !notes.is_empty() {
                self.send_notes(store, id, notes);
            }
        }
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
        self.stats.relay_connected = false;
        self.busy.clear();
        for (id, link) in self.links.iter_mut() {
            link.offline();
            self.states.reset_peer(id);
            self.gate.forget(id);
        }
    }

    /// One binary frame from the relay. `Err`: the page's storage failed
    /// (it reopens); a connection that cannot go on is reported by
    /// [`Self::should_close`].
    pub fn on_relay_frame(
        &mut self,
        store: &PeerStore,
        bytes: &[u8],
        now: Duration,
    ) -> SyncResult<Result<(), ConnError>> {
        self.observe_wall_clock(now);
        self.stats.bytes_received += bytes.len() as u64;
        let Ok(frame) = Frame::decode(bytes) else {
            self.stats.rejected += 1;
            return Ok(Ok(()));
        };
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Err(ConnError::Protocol("a frame with no connection")));
        };
        if !conn.is_ready() {
            let out = match conn.on_frame(&self.kp, &frame) {
                Ok(out) => out,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(f) = out {
                self.push(f);
            }
            if self.conn.as_ref().is_some_and(RelayConn::is_ready) {
                self.stats.relay_connected = true;
                self.announce_peers();
            }
            return Ok(Ok(()));
        }
        match frame {
            Frame::Presence { id, online: true } if self.links.contains_key(&id) => {
                self.stats.note(format!("{} online", short(&id)));
                touch_peer(store, &id);
                self.start_peer(store, id, now)?;
            }
            Frame::Presence { id, online: false } => {
                self.stats.note(format!("{} offline", short(&id)));
                self.peer_offline(&id)
            }
            Frame::Undeliverable { to, reason, .. } => {
                self.stats
                    .note(format!("undeliverable to {}: {reason:?}", short(&to)));
                match reason {
                    // The peer does not accept us yet (an introduction on its
                    // way): the handshake resend timer tries again.
                    UndeliverableReason::NotAllowed => {}
                    UndeliverableReason::RecipientBusy | UndeliverableReason::RateLimited => {
                        if let Some(link) = self.links.get_mut(&to) {
                            if link.lost_messages() {
                                self.states.reset_peer(&to);
                                self.busy.insert(to);
                            }
                        }
                    }
                    _ => self.peer_offline(&to),
                }
            }
            Frame::Deliver { from, payload } => {
                if let Err(e) = self.on_packet(store, from, &payload, now)? {
                    self.stats.rejected += 1;
                    self.stats.last_error =
                        Some(format!("packet from {}: {e}", from.fingerprint()));
                }
            }
            Frame::Error { code, message } => {
                self.stats.last_error = Some(format!("relay error {code}: {message}"));
            }
            _ => {}
        }
        Ok(Ok(()))
    }

    /// A membership entry decided by the core: refused, nothing of it is
    /// stored; else its records, notes and the session commit together
    /// (the session goes instead if the sender itself left), and the peers,
    /// the relay and the passed-on notes follow.
    fn on_membership(
        &mut self,
        store: &PeerStore,
        from: DeviceId,
        update: SessionUpdate,
        mut w: WriteSet,
        change: Result<Change, MembershipError>,
    ) -> SyncResult<()> {
        // A refused entry changes nothing but the session that opened it
        // (committed, so the ratchet moves on); it counts as rejected, and
        // the page's store goes on (it is the peer's fault, not storage's).
        let change = change.unwrap_or_else(|e| {
            self.stats.last_error = Some(format!("membership entry refused: {e}"));
            Change {
                refused: true,
                ..Change::default()
            }
        });
        self.stats.rejected += u64::from(change.refused);
        let sender_left = change.removed.contains(&from);
        // After the session's put: a removal of the sender removes it again.
        w.append(change.writes);
        store.put_records(w);
        if !sender_left {
            if let Some(link) = self.links.get_mut(&from) {
                link.commit(update);
            }
        }
        if !change.added.is_empty() || !change.removed.is_empty() {
            for id in &change.removed {
                self.peer_offline(id);
            }
            self.peers_changed(store);
        }
        Ok(())
    }

    fn peer_offline(&mut self, id: &DeviceId) {
        if let Some(link) = self.links.get_mut(id) {
            link.offline();
            self.states.reset_peer(id);
            self.gate.forget(id);
        }
    }

    fn ready_peers(&self) -> Vec<DeviceId> {
        self.links
            .iter()
            .filter(|(_, l)| l.is_ready())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A peer is online: handshake if needed, else start syncing.
    fn start_peer(&mut self, store: &PeerStore, id: DeviceId, now: Duration) -> SyncResult<()> {
        let Some(link) = self.links.get_mut(&id) else {
            return Ok(());
        };
        match link.online(&self.kp, now) {
            Online::Nothing => Ok(()),
            Online::Send(init) => {
                self.send_packet(id, init);
                Ok(())
            }
            Online::StartSync => self.send_initial_sync(store, id),
        }
    }

    fn become_ready(&mut self, store: &PeerStore, id: DeviceId) -> SyncResult<()> {
        if self.links.get_mut(&id).is_some_and(PeerLink::start_sync) {
            self.send_initial_sync(store, id)?;
        }
        Ok(())
    }

    /// What a peer gets when sync starts: our name, what we take, its queued
    /// notes, and an offer of every document (once it said what it takes).
    fn send_initial_sync(&mut self, store: &PeerStore, id: DeviceId) -> SyncResult<()> {
        let mut payloads = vec![
            SyncPayload::Hello {
                name: device_name(store),
            },
            self.prefs_payload(store, &id),
        ];
        let notes = notes(store, &id);
        payloads.extend(
            notes
                .iter()
                .filter_map(|(_, b)| SyncPayload::decode(b).ok()),
        );
        // The whole removal log: what a lost note failed to say arrives now.
        payloads.extend(group(store, self.me).removal_log());
        self.states.reset_peer(&id);
        let docs = store.all_docs();
        payloads.extend(self.generate(store, &id, &docs)?);
        let keys: Vec<Vec<u8>> = notes.into_iter().map(|(k, _)| k).collect();
        self.send_payloads(store, id, &payloads, &keys);
        Ok(())
    }

    /// What this page tells `peer` it takes: its own app only.
    fn prefs_payload(&self, store: &PeerStore, peer: &DeviceId) -> SyncPayload {
        let only = [store.app().to_string()];
        SyncPayload::Prefs(self.gate.local().for_peer(peer, Some(&only)))
    }

    fn send_notes(&mut self, store: &PeerStore, id: DeviceId, notes: Vec<(Vec<u8>, Vec<u8>)>) {
        let payloads: Vec<SyncPayload> = notes
            .iter()
            .filter_map(|(_, b)| SyncPayload::decode(b).ok())
            .collect();
        let keys: Vec<Vec<u8>> = notes.into_iter().map(|(k, _)| k).collect();
        self.send_payloads(store, id, &payloads, &keys);
    }

    /// Sync messages about `docs` for `peer`, packed into batches.
    fn generate(
        &mut self,
        store: &PeerStore,
        peer: &DeviceId,
        docs: &[DocId],
    ) -> SyncResult<Vec<SyncPayload>> {
        store.fold_batch()?;
        let mut messages = Vec::new();
        if !self.gate.may_send(peer, store.app()) {
            return Ok(Vec::new());
        }
        for doc in docs {
            match store.generate(peer, doc, &mut self.states) {
                Ok(Some(msg)) => messages.push(DocMessage {
                    app: store.app().to_string(),
                    doc: doc.to_string(),
                    msg,
                }),
                Ok(None) => {}
                // One document's records do not decode: it is not offered
                // (its reads answer `corrupt`), the others are, as natively.
                Err(e) if is_document_fault(&e) => {
                    self.stats.note(format!("{doc} not offered: {e}"));
                    self.stats.last_error = Some(format!("{doc} not offered: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(pack_batches(messages))
    }

    /// Seals payloads for `to`, stages the advanced session (and the
    /// removal of the notes sent) in the outbox, commits it to the link,
    /// and queues the packets behind the outbox.
    fn send_payloads(
        &mut self,
        store: &PeerStore,
        to: DeviceId,
        payloads: &[SyncPayload],
        sent_notes: &[Vec<u8>],
    ) {
        if payloads.is_empty() {
            return;
        }
        let Some(link) = self.links.get_mut(&to) else {
            return;
        };
        let sealed = match link.seal(payloads) {
            Ok(s) => s,
            // No session, or not syncing any more: the resync tick's rule
            // for silent responders handshakes afresh.
            Err(SealError::NoSession | SealError::CannotSendYet) => return,
        };
        if let Some(e) = &sealed.stopped {
            self.stats.last_error = Some(format!("sealing for {}: {e}", to.fingerprint()));
        }
        let mut w = WriteSet::new();
        layout::stage_session(&mut w, &to, &sealed.update.bytes());
        // Notes leave the queue only when every payload was sealed (sent
        // twice is harmless: a note's effect is idempotent; never is not).
        if sealed.stopped.is_none() {
            for k in sent_notes {
                layout::stage_remove_note(&mut w, k);
            }
        }
        store.put_records(w);
        link.commit(sealed.update);
        self.stats.note(format!(
            "to {}: {} payload(s) sealed: {}",
            short(&to),
            payloads.len(),
            payloads
                .iter()
                .map(payload_kind)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for packet in sealed.packets {
            self.stats.envelopes_sent += 1;
            self.send_packet(to, packet);
        }
    }

    /// Stages a session update on its own and installs it.
    fn commit_session(&mut self, store: &PeerStore, peer: DeviceId, update: SessionUpdate) {
        let mut w = WriteSet::new();
        layout::stage_session(&mut w, &peer, &update.bytes());
        if let Some(mark) = update.init_mark() {
            layout::stage_init_mark(&mut w, &peer, mark);
        }
        store.put_records(w);
        if let Some(link) = self.links.get_mut(&peer) {
            link.commit(update);
        }
    }

    /// A packet from a paired device. The outer `Err`: storage failed; the
    /// inner one: the packet was refused (the session is unchanged).
    fn on_packet(
        &mut self,
        store: &PeerStore,
        from: DeviceId,
        bytes: &[u8],
        now: Duration,
    ) -> SyncResult<Result<(), String>> {
        let Some(link) = self.links.get_mut(&from) else {
            return Ok(Err("not a paired device".into()));
        };
        let received = match link.on_packet(&self.kp, bytes, now) {
            Ok(r) => r,
            Err(e) => {
                self.stats
                    .note(format!("refused from {}: {e}", short(&from)));
                return Ok(Err(e.to_string()));
            }
        };
        self.stats.note(format!(
            "from {}: {}",
            short(&from),
            received_kind(&received)
        ));
        match received {
            Received::Nothing => {}
            Received::Send(packet) => self.send_packet(from, packet),
            Received::Answered { update, response } => {
                self.commit_session(store, from, update);
                // The initiator speaks first; we start syncing when its
                // first envelope opens.
                self.send_packet(from, response);
            }
            Received::Established { update } => {
                self.commit_session(store, from, update);
                self.become_ready(store, from)?;
            }
            Received::Opened {
                update,
                payload,
                start_sync,
            } => {
                self.stats.envelopes_received += 1;
                match payload {
                    None => self.commit_session(store, from, update),
                    Some(payload) => self.on_payload(store, from, update, payload)?,
                }
                if start_sync {
                    self.become_ready(store, from)?;
                }
            }
        }
        Ok(Ok(()))
    }

    /// A whole payload opened with `update`: its effects and the session
    /// are staged together, then the session is committed.
    fn on_payload(
        &mut self,
        store: &PeerStore,
        from: DeviceId,
        update: SessionUpdate,
        payload: SyncPayload,
    ) -> SyncResult<()> {
        let mut w = WriteSet::new();
        layout::stage_session(&mut w, &from, &update.bytes());
        match payload {
            SyncPayload::Batch(mut items) => {
                let before = items.len();
                items.retain(|it| self.gate.may_receive(&from, &it.app));
                self.stats.filtered += (before - items.len()) as u64;
                let applied = store.apply_remote(&from, items, &mut self.states, w)?;
                self.stats.rejected += applied.rejected as u64;
                self.stats.other_apps += applied.other_apps as u64;
                if let Some(link) = self.links.get_mut(&from) {
                    link.commit(update);
                }
                let replies = self.generate(store, &from, &applied.docs)?;
                self.send_payloads(store, from, &replies, &[]);
                return Ok(());
            }
            SyncPayload::Introduce(list) => {
                let change = group(store, self.me).introduce(&from, &list, secs(store));
                self.on_membership(store, from, update, w, change)?;
            }
            SyncPayload::Removal(entry) => {
                let change = group(store, self.me).on_removal(&from, &entry, secs(store));
                self.on_membership(store, from, update, w, change)?;
            }
            SyncPayload::Removed(id) => {
                let change = group(store, self.me).on_legacy_removed(&from, &id, secs(store));
                self.on_membership(store, from, update, w, change)?;
            }
            SyncPayload::Hello { name } => {
                if let Some(mut rec) = peer_record(store, &from) {
                    rec.name = name;
                    layout::stage_peer_record(&mut w, &from, &rec)
                        .map_err(|e| ApiError::new("storage", e.to_string()))?;
                }
                store.put_records(w);
                if let Some(link) = self.links.get_mut(&from) {
                    link.commit(update);
                }
                // A new session of a peer whose word is still held here (it
                // reconnected without the relay saying it went): it forgot
                // ours, so it gets them again, and its word is awaited.
                if self.gate.remote(&from).is_some() {
                    self.gate.forget(&from);
                    self.states.reset_peer(&from);
                    if self.is_ready(&from) {
                        let prefs = self.prefs_payload(store, &from);
                        self.send_payloads(store, from, &[prefs], &[]);
                    }
                }
            }
            SyncPayload::Prefs(prefs) => {
                store.put_records(w);
                if let Some(link) = self.links.get_mut(&from) {
                    link.commit(update);
                }
                self.stats.note(format!(
                    "{} takes: paused {}, {} app(s) off, only {}",
                    short(&from),
                    prefs.paused,
                    prefs.off.len(),
                    prefs
                        .only
                        .as_ref()
                        .map_or("any app".to_string(), |o| format!("{} app(s)", o.len()))
                ));
                // Sync starts first if this opened it (our prefs go out),
                // then the peer is offered what it takes.
                self.become_ready(store, from)?;
                if self.gate.on_remote(from, prefs) {
                    self.states.reset_peer(&from);
                    let docs = store.all_docs();
                    let offer = self.generate(store, &from, &docs)?;
                    self.send_payloads(store, from, &offer, &[]);
                }
            }
            // The link hands over whole payloads only.
            SyncPayload::Fragment { .. } => {}
        }
        Ok(())
    }

    /// After a batch of the app's requests: what changed is offered to
    /// every ready peer (except the one a change came from).
    pub fn flush(&mut self, store: &PeerStore) -> SyncResult<()> {
        // The batch's KV writes become their shards' changes first, or
        // they would wait for the next batch to be offered.
        store.fold_batch()?;
        let changed = store.take_changed();
        if changed.is_empty() {
            return Ok(());
        }
        for id in self.ready_peers() {
            let docs: Vec<DocId> = changed
                .iter()
                .filter(|(_, from)| **from != Some(id))
                .map(|(d, _)| d.clone())
                .collect();
            if docs.is_empty() {
                continue;
            }
            let batches = self.generate(store, &id, &docs)?;
            self.send_payloads(store, id, &batches, &[]);
        }
        Ok(())
    }

    /// The page's timer (about once a second): unanswered handshakes are
    /// sent again, busy peers restart, and every [`RESYNC_INTERVAL`] every
    /// document is offered again.
    pub fn on_tick(&mut self, store: &PeerStore, now: Duration) -> SyncResult<()> {
        self.observe_wall_clock(now);
        if !self.conn.as_ref().is_some_and(RelayConn::is_ready) {
            return Ok(());
        }
        let stale: Vec<(DeviceId, Vec<u8>)> = self
            .links
            .iter_mut()
            .filter_map(|(id, l)| l.on_retry_tick(now).map(|init| (*id, init)))
            .collect();
        for (id, init) in stale {
            self.send_packet(id, init);
        }
        for id in std::mem::take(&mut self.busy) {
            if self.is_online(&id) {
                self.become_ready(store, id)?;
            }
        }
        if now.saturating_sub(self.last_resync) < RESYNC_INTERVAL {
            return Ok(());
        }
        self.last_resync = now;
        for id in self.ready_peers() {
            let notes = notes(store, &id);
            if !notes.is_empty() {
                self.send_notes(store, id, notes);
            }
            self.states.on_resync_tick(&id);
            let docs = store.all_docs();
            // The prefs go again with every resync (a lost one would stop
            // the peer offering anything).
            let mut payloads = vec![self.prefs_payload(store, &id)];
            payloads.extend(self.generate(store, &id, &docs)?);
            self.send_payloads(store, id, &payloads, &[]);
        }
        // A responder whose initiator never spoke: start over as initiator.
        let kp = &self.kp;
        let fresh: Vec<(DeviceId, Vec<u8>)> = self
            .links
            .iter_mut()
            .filter_map(|(id, l)| l.on_resync_tick(kp, now).map(|init| (*id, init)))
            .collect();
        for (id, init) in fresh {
            self.send_packet(id, init);
        }
        Ok(())
    }
}

/// The page's own sync choices, from its `meta` records (as natively).
fn local_prefs(store: &PeerStore) -> LocalPrefs {
    let mut records = store.meta_prefix(layout::SYNC_OFF);
    if let Some(v) = store.meta(layout::SYNC_PAUSED) {
        records.push((layout::SYNC_PAUSED.to_vec(), v));
    }
    LocalPrefs::from_records(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

/// Whether `e` is about one document (its stored records do not decode)
/// rather than the page's storage: the document is skipped, sync goes on.
pub(crate) fn is_document_fault(e: &ApiError) -> bool {
    e.code == "corrupt"
}

/// A device's id, short, for [`SyncStats::recent`].
fn short(id: &DeviceId) -> String {
    id.fingerprint().chars().take(9).collect()
}

fn received_kind(r: &Received) -> String {
    match r {
        Received::Nothing => "nothing".into(),
        Received::Send(_) => "answered with a packet".into(),
        Received::Answered { .. } => "handshake answered".into(),
        Received::Established { .. } => "handshake established".into(),
        Received::Opened {
            payload,
            start_sync,
            ..
        } => format!(
            "opened {}{}",
            payload.as_ref().map_or("a fragment".into(), payload_kind),
            if *start_sync { ", sync starts" } else { "" }
        ),
    }
}

fn payload_kind(p: &SyncPayload) -> String {
    match p {
        SyncPayload::Batch(items) => format!("batch of {}", items.len()),
        SyncPayload::Introduce(l) => format!("introduction of {}", l.len()),
        SyncPayload::Removed(_) | SyncPayload::Removal(_) => "removal".into(),
        SyncPayload::Hello { .. } => "hello".into(),
        SyncPayload::Prefs(_) => "prefs".into(),
        SyncPayload::Fragment { .. } => "fragment".into(),
    }
}

/// Seconds since the epoch, as the page last said.
fn secs(store: &PeerStore) -> i64 {
    store.now_secs()
}

/// The device group as the page records it.
pub fn group(store: &PeerStore, me: DeviceId) -> Group {
    let records = Group::PREFIXES
        .iter()
        .flat_map(|p| store.meta_prefix(p))
        .collect::<Vec<_>>();
    Group::from_records(me, records)
}

/// The paired devices, in id order.
pub fn peers(store: &PeerStore) -> Vec<(DeviceId, PeerRecord)> {
    store
        .meta_prefix(PEER)
        .into_iter()
        .filter_map(|(k, v)| {
            let id = peer_of_key(&k)?;
            let rec: PeerRecord = serde_json::from_slice(&v).ok()?;
            Some((id, rec))
        })
        .collect()
}

/// One paired device's record.
pub fn peer_record(store: &PeerStore, id: &DeviceId) -> Option<PeerRecord> {
    serde_json::from_slice(&store.meta(&peer_key(id))?).ok()
}

/// The notes queued for `peer`: (key, encoded payload).
fn notes(store: &PeerStore, peer: &DeviceId) -> Vec<(Vec<u8>, Vec<u8>)> {
    store.meta_prefix(&note_prefix(peer))
}

/// Records that `id` was seen online now.
fn touch_peer(store: &PeerStore, id: &DeviceId) {
    if let Some(mut rec) = peer_record(store, id) {
        rec.last_seen = secs(store);
        let mut w = WriteSet::new();
        if layout::stage_peer_record(&mut w, id, &rec).is_ok() {
            store.put_records(w);
        }
    }
}

/// This device's name.
pub fn device_name(store: &PeerStore) -> String {
    store
        .meta(NAME)
        .map(|v| String::from_utf8_lossy(&v).to_string())
        .unwrap_or_else(|| DEFAULT_NAME.to_string())
}

/// The relay this device uses, once it paired.
pub fn relay_url(store: &PeerStore) -> Option<String> {
    store
        .meta(RELAY_URL)
        .map(|v| String::from_utf8_lossy(&v).to_string())
}
