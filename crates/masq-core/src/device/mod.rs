//! One device, sans I/O: what a native store's sync engine and a page's
//! sync shell each did in their own copy, written once.
//!
//! A [`Device`] owns this device's identity, a [`PeerLink`] per paired
//! device (handshakes, Double Ratchet sessions, fragments, resend timers),
//! the Automerge sync state per (peer, app, document) ([`DocStates`]) and
//! the [`SyncGate`] (which app flows with which peer). Its shell hands it
//! what happened — the relay came up or went, a relay event
//! ([`RelayEvent`]), documents changed, a timer fired — with the time
//! ([`Now`]); it reads and commits records through the shell's
//! [`DeviceHost`], and leaves what to send in [`Device::take_out`].
//!
//! The one rule: **persist, commit, then send.** Every step that advances a
//! ratchet commits the new session through the host (with whatever a
//! received payload changed, in the same write set) before it commits the
//! session to its link in memory, and its packets are emitted only after
//! both; the host's contract ([`host`]) makes them leave only once durable.
//!
//! Errors: a step returns `Err` only when the host's storage failed (a
//! native shell logs it and goes on; a page reopens its store, since memory
//! may be ahead of the disk). What a peer or the relay sends that is bad is
//! counted in [`DeviceStats::rejected`] and never an error of the step.
//!
//! Architecture invariant: no I/O, no clock, no randomness of its own (keys
//! and nonces come from `crypto::random_bytes`, which a simulation seeds).

pub mod doc_sync;
pub mod host;
pub mod meta;
pub mod ops;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::crypto::{check_public_key, DeviceId, DeviceKeypair, Session};
use crate::doc::DocId;
use crate::layout::meta as layout;
use crate::records::WriteSet;
use crate::sync::link::{LinkError, Online, PeerLink, Received, SealError, SessionUpdate};
use crate::sync::membership::{Change, MembershipError};
use crate::sync::prefs::LocalPrefs;
use crate::wire::device::{PeerPrefs, SyncPayload};
use crate::wire::relay_frame::UndeliverableReason;

pub use doc_sync::DocSync;
pub use host::{Applied, Commit, DeviceHost};
use meta::ReadError;

/// How often every ready peer is offered every document again from the
/// persisted sync states (Automerge's sync assumes a reliable stream, and
/// the relay may drop), unless the shell sets another interval.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// How many steps [`DeviceStats::recent`] keeps: enough to see one peer's
/// handshake and first batches when sync seems stuck.
pub const RECENT_EVENTS: usize = 64;

/// The time, as the shell gives it with every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// A clock that never goes back (the links' resend and silence timers).
    pub mono: Duration,
    /// The wall clock, ms since the Unix epoch (handshake init stamps,
    /// membership and last-seen times).
    pub unix_ms: u64,
}

impl Now {
    /// Seconds since the Unix epoch.
    pub fn unix_secs(&self) -> i64 {
        i64::try_from(self.unix_ms / 1000).unwrap_or(i64::MAX)
    }
}

/// What the relay told the device (the shell decodes its frames).
#[derive(Debug, Clone)]
pub enum RelayEvent {
    /// A paired device came online.
    Online(DeviceId),
    /// A paired device went offline.
    Offline(DeviceId),
    /// A packet to this device could not be delivered.
    Undeliverable(DeviceId, UndeliverableReason),
    /// A packet from a device.
    Packet {
        /// Who sent it (the relay authenticated it).
        from: DeviceId,
        /// The packet.
        bytes: Vec<u8>,
    },
}

/// What the device asks its shell to send, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A device packet (handshake or sealed envelope) for `to`.
    Packet {
        /// The recipient.
        to: DeviceId,
        /// The packet.
        bytes: Vec<u8>,
    },
    /// Tell the relay these are the only devices that may reach us.
    Allow(Vec<DeviceId>),
    /// Tell the relay whose presence we watch.
    Watch(Vec<DeviceId>),
}

/// What the device reports about itself.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeviceStats {
    /// Connected and authenticated to the relay.
    pub relay_connected: bool,
    /// Envelopes sealed and handed to the shell to send.
    pub envelopes_sent: u64,
    /// Envelopes received and opened.
    pub envelopes_received: u64,
    /// Packet bytes handed to the shell to send.
    pub bytes_sent: u64,
    /// Packet bytes the relay delivered.
    pub bytes_received: u64,
    /// Packets refused (bad, unknown sender, replay, ...) and membership
    /// entries and sync messages refused.
    pub rejected: u64,
    /// Sync messages for an app this device does not hold, dropped.
    pub other_apps: u64,
    /// Sync messages dropped because their app does not sync with the
    /// sender here (or sync is paused).
    pub filtered: u64,
    /// The last error a peer's packet or the storage caused, if any.
    pub last_error: Option<String>,
    /// The last [`RECENT_EVENTS`] steps, oldest first (who came online,
    /// what was sealed and opened, what was refused).
    pub recent: VecDeque<String>,
}

impl DeviceStats {
    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(what());
    }
}

/// One device: its identity, its links and what flows on them.
pub struct Device {
    /// This device's key pair.
    kp: DeviceKeypair,
    /// Its id.
    me: DeviceId,
    /// The protocol state with each paired device.
    links: BTreeMap<DeviceId, PeerLink>,
    /// Automerge sync state per (peer, app, document), and which documents
    /// may flow with which peer (pause, apps off, what each peer said it
    /// takes): nothing is offered before a peer said.
    docs: DocSync,
    /// Whether the relay connection is up and authenticated.
    relay_up: bool,
    /// Online peers whose messages the relay refused as busy or rate
    /// limited: sync with them starts over on the next retry tick (no
    /// presence change will come).
    busy: BTreeSet<DeviceId>,
    /// When every document was last offered again (for [`Device::on_tick`]).
    last_resync: Option<Duration>,
    /// How often [`Device::on_tick`] offers every document again.
    resync_interval: Duration,
    /// What to send, in order, until the shell takes it.
    out: Vec<Out>,
    /// Counters.
    stats: DeviceStats,
}

/// A device step failed because the host's storage did.
pub type StepResult<T, H> = Result<T, <H as crate::records::Records>::Error>;

impl Device {
    /// The device of `host`: its identity is loaded, or made and committed
    /// ([`Commit::Sealed`]) before anything that uses it leaves; its peers'
    /// links are made from their records.
    pub fn open<H: DeviceHost>(host: &H, now: Now) -> Result<Self, ReadError<H::Error>> {
        let kp = match meta::identity(host)? {
            Some(kp) => kp,
            None => {
                let kp = DeviceKeypair::generate();
                let mut w = WriteSet::new();
                w.put(
                    crate::records::Table::Meta,
                    layout::IDENTITY.to_vec(),
                    kp.secret_bytes().to_vec(),
                );
                host.commit(w, Commit::Sealed).map_err(ReadError::Storage)?;
                kp
            }
        };
        let local = meta::local_prefs(host).unwrap_or_else(|_| {
            // Unreadable choices: sync nothing rather than what the user
            // may have turned off.
            LocalPrefs {
                paused: true,
                ..LocalPrefs::default()
            }
        });
        let mut device = Device {
            me: kp.device_id(),
            kp,
            links: BTreeMap::new(),
            docs: DocSync::new(local),
            relay_up: false,
            busy: BTreeSet::new(),
            last_resync: None,
            resync_interval: RESYNC_INTERVAL,
            out: Vec::new(),
            stats: DeviceStats::default(),
        };
        device.load_peers(host, now).map_err(ReadError::Storage)?;
        Ok(device)
    }

    /// Sets how often [`Device::on_tick`] offers every document again.
    pub fn set_resync_interval(&mut self, every: Duration) {
        self.resync_interval = every;
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
    pub fn stats(&self) -> &DeviceStats {
        &self.stats
    }

    /// The paired devices this device has a link with, in id order.
    pub fn peers(&self) -> impl Iterator<Item = &DeviceId> {
        self.links.keys()
    }

    /// Whether `peer` is online.
    pub fn is_online(&self, peer: &DeviceId) -> bool {
        self.links.get(peer).is_some_and(PeerLink::is_online)
    }

    /// Whether `peer` is online and syncing.
    pub fn is_ready(&self, peer: &DeviceId) -> bool {
        self.links.get(peer).is_some_and(PeerLink::is_ready)
    }

    /// This device's own sync choices.
    pub fn local_prefs(&self) -> &LocalPrefs {
        self.docs.gate().local()
    }

    /// What `peer` said it takes, in its current session.
    pub fn remote_prefs(&self, peer: &DeviceId) -> Option<&PeerPrefs> {
        self.docs.gate().remote(peer)
    }

    /// What to send now, in order (everything it depends on was given to
    /// the host's commit first).
    pub fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// Notes an error the shell met outside a step.
    pub fn note_error(&mut self, what: String) {
        self.stats.last_error = Some(what);
    }

    /// Counts something the relay sent that the shell refused before it
    /// reached the device (a frame that does not decode).
    pub fn note_rejected(&mut self, what: String) {
        self.stats.rejected += 1;
        self.stats.last_error = Some(what);
    }

    fn send_packet(&mut self, to: DeviceId, bytes: Vec<u8>) {
        self.stats.bytes_sent += bytes.len() as u64;
        self.out.push(Out::Packet { to, bytes });
    }

    fn ready_peers(&self) -> Vec<DeviceId> {
        self.links
            .iter()
            .filter(|(_, l)| l.is_ready())
            .map(|(id, _)| *id)
            .collect()
    }

    /// (Re)reads the paired devices: new ones get a link (with their
    /// persisted session and init mark), removed ones lose theirs.
    pub fn load_peers<H: DeviceHost>(&mut self, host: &H, now: Now) -> StepResult<(), H> {
        let records = match meta::peers(host) {
            Ok(r) => r,
            Err(ReadError::Storage(e)) => return Err(e),
            Err(ReadError::Malformed(what)) => {
                self.stats.last_error = Some(format!("stored {what} is malformed"));
                return Ok(());
            }
        };
        self.links
            .retain(|id, _| records.iter().any(|(r, _)| r == id));
        for (id, rec) in records {
            if self.links.contains_key(&id) {
                continue;
            }
            let Ok(public) = rec.public() else { continue };
            if check_public_key(&public).is_err() {
                self.stats.last_error = Some(format!("{id:?} has a low-order key; ignored"));
                continue;
            }
            let session =
                meta::session_bytes(host, &id)?.and_then(|b| Session::from_bytes(&b).ok());
            let mark = meta::init_mark(host, &id)?;
            self.links.insert(
                id,
                PeerLink::new(self.me, public, session, mark, now.unix_ms),
            );
        }
        Ok(())
    }

    /// The wall clock: the links' next inits are stamped at least from it.
    fn observe(&mut self, now: Now) {
        for link in self.links.values_mut() {
            link.observe_wall_clock(now.unix_ms);
        }
    }

    fn announce_peers(&mut self) {
        if !self.relay_up {
            return;
        }
        let ids: Vec<DeviceId> = self.links.keys().copied().collect();
        self.out.push(Out::Allow(ids.clone()));
        self.out.push(Out::Watch(ids));
    }

    /// The relay connection is up and authenticated: it is told who may
    /// reach us and whose presence we watch. The sync choices are read
    /// again (made while the relay was away, they hold from now on).
    pub fn relay_up<H: DeviceHost>(&mut self, host: &H, now: Now) -> StepResult<(), H> {
        self.observe(now);
        self.docs.set_local(meta::local_prefs(host)?);
        self.relay_up = true;
        self.stats.relay_connected = true;
        self.announce_peers();
        Ok(())
    }

    /// The relay connection closed: every peer is offline until it is
    /// back, and nothing queued for the old connection goes out on the next.
    pub fn relay_down(&mut self) {
        self.relay_up = false;
        self.stats.relay_connected = false;
        self.out.clear();
        self.busy.clear();
        let ids: Vec<DeviceId> = self.links.keys().copied().collect();
        for id in ids {
            self.peer_offline(&id);
        }
    }

    fn peer_offline(&mut self, id: &DeviceId) {
        if let Some(link) = self.links.get_mut(id) {
            link.offline();
        }
        self.docs.peer_offline(id);
    }

    /// The set of paired devices changed outside the device (pairing, a
    /// removal here): links follow, the relay is told, and queued notes go
    /// to every ready peer.
    pub fn peers_changed<H: DeviceHost>(&mut self, host: &H, now: Now) -> StepResult<(), H> {
        self.load_peers(host, now)?;
        self.announce_peers();
        self.flush_notes(host)
    }

    /// This device's sync choices changed: every syncing peer is told, and
    /// offered again every document it may now have.
    pub fn prefs_changed<H: DeviceHost>(&mut self, host: &H) -> StepResult<(), H> {
        self.docs.set_local(meta::local_prefs(host)?);
        for id in self.ready_peers() {
            self.docs.reset_peer(&id);
            let mut payloads = vec![self.prefs_payload(host, &id)];
            let docs = host.all_docs()?;
            payloads.extend(self.generate(host, &id, &docs)?);
            self.send_payloads(host, id, &payloads, &[])?;
        }
        Ok(())
    }

    /// One event from the relay.
    pub fn on_relay_event<H: DeviceHost>(
        &mut self,
        host: &H,
        event: RelayEvent,
        now: Now,
    ) -> StepResult<(), H> {
        self.observe(now);
        match event {
            RelayEvent::Online(id) => {
                if !self.links.contains_key(&id) {
                    return Ok(());
                }
                self.stats.note(|| format!("{} online", short(&id)));
                self.touch_peer(host, &id, now)?;
                let link = self.links.get_mut(&id).expect("checked above");
                match link.online(&self.kp, now.mono) {
                    Online::Nothing => {}
                    Online::Send(init) => self.send_packet(id, init),
                    Online::StartSync => self.send_initial_sync(host, id)?,
                }
            }
            RelayEvent::Offline(id) => {
                self.stats.note(|| format!("{} offline", short(&id)));
                self.peer_offline(&id);
            }
            RelayEvent::Undeliverable(id, reason) => {
                self.stats
                    .note(|| format!("undeliverable to {}: {reason:?}", short(&id)));
                match reason {
                    // The peer does not accept us yet (an introduction on
                    // its way): the handshake resend timer tries again.
                    UndeliverableReason::NotAllowed => {}
                    // Lost while the peer stays online: no presence change
                    // will come, so sync restarts on the next retry tick.
                    UndeliverableReason::RecipientBusy | UndeliverableReason::RateLimited => {
                        if let Some(link) = self.links.get_mut(&id) {
                            if link.lost_messages() {
                                self.docs.reset_peer(&id);
                                self.busy.insert(id);
                            }
                        }
                    }
                    _ => self.peer_offline(&id),
                }
            }
            RelayEvent::Packet { from, bytes } => {
                self.stats.bytes_received += bytes.len() as u64;
                if let Err(e) = self.on_packet(host, from, &bytes, now)? {
                    self.stats.rejected += 1;
                    self.stats.last_error = Some(format!("packet from {}: {e}", short(&from)));
                }
            }
        }
        Ok(())
    }

    /// Records that `id` was seen online now.
    fn touch_peer<H: DeviceHost>(
        &mut self,
        host: &H,
        id: &DeviceId,
        now: Now,
    ) -> StepResult<(), H> {
        let rec = match meta::peer(host, id) {
            Ok(Some(rec)) => rec,
            Ok(None) | Err(ReadError::Malformed(_)) => return Ok(()),
            Err(ReadError::Storage(e)) => return Err(e),
        };
        let mut rec = rec;
        rec.last_seen = now.unix_secs();
        let mut w = WriteSet::new();
        if layout::stage_peer_record(&mut w, id, &rec).is_ok() {
            host.commit(w, Commit::Received)?;
        }
        Ok(())
    }

    fn become_ready<H: DeviceHost>(&mut self, host: &H, id: DeviceId) -> StepResult<(), H> {
        if self.links.get_mut(&id).is_some_and(PeerLink::start_sync) {
            self.send_initial_sync(host, id)?;
        }
        Ok(())
    }

    /// What a peer gets when sync starts: our name, what we take from it,
    /// the notes queued for it, the whole removal log (what a lost note
    /// failed to say arrives now), and an offer of every document it may
    /// have (none until it said what it takes).
    fn send_initial_sync<H: DeviceHost>(&mut self, host: &H, id: DeviceId) -> StepResult<(), H> {
        let name = meta::device_name(host)?.unwrap_or_else(|| host.default_name());
        let mut payloads = vec![SyncPayload::Hello { name }, self.prefs_payload(host, &id)];
        let notes = meta::notes(host, &id)?;
        payloads.extend(
            notes
                .iter()
                .filter_map(|(_, b)| SyncPayload::decode(b).ok()),
        );
        payloads.extend(meta::group(host, self.me)?.removal_log());
        self.docs.reset_peer(&id);
        let docs = host.all_docs()?;
        payloads.extend(self.generate(host, &id, &docs)?);
        let keys: Vec<Vec<u8>> = notes.into_iter().map(|(k, _)| k).collect();
        self.send_payloads(host, id, &payloads, &keys)
    }

    /// What this device tells `peer` it takes.
    fn prefs_payload<H: DeviceHost>(&self, host: &H, peer: &DeviceId) -> SyncPayload {
        let only = host.only_apps();
        SyncPayload::Prefs(self.docs.prefs_for(peer, only.as_deref()))
    }

    /// Sends queued notes (introductions, removals) to every ready peer.
    fn flush_notes<H: DeviceHost>(&mut self, host: &H) -> StepResult<(), H> {
        for id in self.ready_peers() {
            let notes = meta::notes(host, &id)?;
            if notes.is_empty() {
                continue;
            }
            let payloads: Vec<SyncPayload> = notes
                .iter()
                .filter_map(|(_, b)| SyncPayload::decode(b).ok())
                .collect();
            let keys: Vec<Vec<u8>> = notes.into_iter().map(|(k, _)| k).collect();
            self.send_payloads(host, id, &payloads, &keys)?;
        }
        Ok(())
    }

    /// Sync messages about `docs` for `peer`, packed into batches (a
    /// document whose records do not decode is noted and skipped).
    fn generate<H: DeviceHost>(
        &mut self,
        host: &H,
        peer: &DeviceId,
        docs: &[(String, DocId)],
    ) -> StepResult<Vec<SyncPayload>, H> {
        let offer = self.docs.generate(host, peer, docs)?;
        for (app, doc, e) in offer.skipped {
            self.stats.note(|| format!("{app}/{doc} not offered"));
            self.stats.last_error = Some(format!("{app}/{doc} not offered: {e}"));
        }
        Ok(offer.payloads)
    }

    /// Seals payloads for `to` (the link fragments large ones), commits the
    /// advanced session (and the removal of the notes sent) through the
    /// host, commits it to the link, then emits the packets.
    fn send_payloads<H: DeviceHost>(
        &mut self,
        host: &H,
        to: DeviceId,
        payloads: &[SyncPayload],
        sent_notes: &[Vec<u8>],
    ) -> StepResult<(), H> {
        if payloads.is_empty() {
            return Ok(());
        }
        let Some(link) = self.links.get_mut(&to) else {
            return Ok(());
        };
        let sealed = match link.seal(payloads) {
            Ok(s) => s,
            // No session, or not syncing any more: the resync tick's rule
            // for silent responders handshakes afresh.
            Err(SealError::NoSession | SealError::CannotSendYet) => return Ok(()),
        };
        for e in &sealed.dropped {
            self.stats.last_error = Some(format!("{e}; dropped"));
        }
        if let Some(e) = &sealed.stopped {
            self.stats.last_error = Some(format!("sealing for {}: {e}", short(&to)));
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
        host.commit(w, Commit::Sealed)?;
        if let Some(link) = self.links.get_mut(&to) {
            link.commit(sealed.update);
        }
        self.stats.note(|| {
            format!(
                "to {}: {}",
                short(&to),
                payloads
                    .iter()
                    .map(payload_kind)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        for packet in sealed.packets {
            self.stats.envelopes_sent += 1;
            self.send_packet(to, packet);
        }
        Ok(())
    }

    /// Commits a session update on its own (with its init mark), then
    /// installs it.
    fn commit_session<H: DeviceHost>(
        &mut self,
        host: &H,
        peer: DeviceId,
        update: SessionUpdate,
    ) -> StepResult<(), H> {
        let mut w = WriteSet::new();
        layout::stage_session(&mut w, &peer, &update.bytes());
        if let Some(mark) = update.init_mark() {
            layout::stage_init_mark(&mut w, &peer, mark);
        }
        host.commit(w, Commit::Received)?;
        self.install_session(peer, update);
        Ok(())
    }

    /// Installs a session update whose bytes were committed.
    fn install_session(&mut self, peer: DeviceId, update: SessionUpdate) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.commit(update);
        }
    }

    /// A packet from `from`. Outer `Err`: storage failed; inner: the
    /// packet was refused (the session is unchanged).
    fn on_packet<H: DeviceHost>(
        &mut self,
        host: &H,
        from: DeviceId,
        bytes: &[u8],
        now: Now,
    ) -> StepResult<Result<(), String>, H> {
        let Some(link) = self.links.get_mut(&from) else {
            return Ok(Err("not a paired device".into()));
        };
        let received = match link.on_packet(&self.kp, bytes, now.mono) {
            Ok(r) => r,
            Err(e) => {
                // An envelope that opened but held no valid payload was
                // still received.
                if matches!(e, LinkError::Payload(_) | LinkError::NestedFragment) {
                    self.stats.envelopes_received += 1;
                }
                self.stats
                    .note(|| format!("refused from {}: {e}", short(&from)));
                return Ok(Err(e.to_string()));
            }
        };
        self.stats
            .note(|| format!("from {}: {}", short(&from), received_kind(&received)));
        match received {
            Received::Nothing => {}
            Received::Send(packet) => self.send_packet(from, packet),
            Received::Answered { update, response } => {
                self.commit_session(host, from, update)?;
                // The initiator speaks first (it holds the first sending
                // chain); we start syncing when its first envelope opens.
                self.send_packet(from, response);
            }
            Received::Established { update } => {
                self.commit_session(host, from, update)?;
                self.become_ready(host, from)?;
            }
            Received::Opened {
                update,
                payload,
                start_sync,
            } => {
                self.stats.envelopes_received += 1;
                match payload {
                    // A fragment of a payload not yet whole: only the ratchet advanced.
                    None => self.commit_session(host, from, update)?,
                    Some(payload) => {
                        self.on_payload(host, from, update, payload, start_sync, now)?
                    }
                }
                if start_sync {
                    self.become_ready(host, from)?;
                }
            }
        }
        Ok(Ok(()))
    }

    /// A whole payload opened with `update`: its effects and the session
    /// are committed together, then the session is installed.
    fn on_payload<H: DeviceHost>(
        &mut self,
        host: &H,
        from: DeviceId,
        update: SessionUpdate,
        payload: SyncPayload,
        start_sync: bool,
        now: Now,
    ) -> StepResult<(), H> {
        let mut w = WriteSet::new();
        layout::stage_session(&mut w, &from, &update.bytes());
        match payload {
            SyncPayload::Batch(items) => {
                let receipt = self.docs.receive(host, &from, items, w)?;
                self.stats.filtered += receipt.filtered as u64;
                let applied = receipt.applied;
                self.stats.rejected += applied.rejected as u64;
                self.stats.other_apps += applied.other_apps as u64;
                self.install_session(from, update);
                // Sync starts first if this opened it (our Hello and prefs
                // go out before the replies).
                if start_sync {
                    self.become_ready(host, from)?;
                }
                let replies = self.generate(host, &from, &applied.docs)?;
                self.send_payloads(host, from, &replies, &[])?;
            }
            SyncPayload::Introduce(list) => {
                self.on_membership(host, from, update, w, now, |g, secs| {
                    g.introduce(&from, &list, secs)
                })?;
            }
            SyncPayload::Removal(entry) => {
                self.on_membership(host, from, update, w, now, |g, secs| {
                    g.on_removal(&from, &entry, secs)
                })?;
            }
            SyncPayload::Removed(id) => {
                self.on_membership(host, from, update, w, now, |g, secs| {
                    g.on_legacy_removed(&from, &id, secs)
                })?;
            }
            SyncPayload::Hello { name } => {
                match meta::peer(host, &from) {
                    Ok(Some(mut rec)) => {
                        rec.name = name;
                        if layout::stage_peer_record(&mut w, &from, &rec).is_err() {
                            self.stats.last_error = Some("a peer's name did not store".into());
                        }
                    }
                    Ok(None) | Err(ReadError::Malformed(_)) => {}
                    Err(ReadError::Storage(e)) => return Err(e),
                }
                host.commit(w, Commit::Received)?;
                self.install_session(from, update);
                // A new session of a peer whose word is still held here (it
                // reconnected without the relay saying it went): it forgot
                // ours, so it gets them again, and its word is awaited.
                if self.docs.on_peer_hello(&from) && self.is_ready(&from) && !start_sync {
                    let prefs = self.prefs_payload(host, &from);
                    self.send_payloads(host, from, &[prefs], &[])?;
                }
            }
            SyncPayload::Prefs(prefs) => {
                host.commit(w, Commit::Received)?;
                self.install_session(from, update);
                self.stats.note(|| {
                    format!(
                        "{} takes: paused {}, {} app(s) off, only {}",
                        short(&from),
                        prefs.paused,
                        prefs.off.len(),
                        prefs
                            .only
                            .as_ref()
                            .map_or("any app".to_string(), |o| format!("{} app(s)", o.len()))
                    )
                });
                // Sync starts first if this opened it (our prefs go out),
                // then the peer is offered what it takes.
                if start_sync {
                    self.become_ready(host, from)?;
                }
                if self.docs.on_remote_prefs(from, prefs) {
                    let docs = host.all_docs()?;
                    let offer = self.generate(host, &from, &docs)?;
                    self.send_payloads(host, from, &offer, &[])?;
                }
            }
            // The link hands over whole payloads only.
            SyncPayload::Fragment { .. } => {}
        }
        Ok(())
    }

    /// A membership entry from `from`, decided by the core on the group as
    /// recorded (under the host's group guard): refused, nothing of it is
    /// stored but the session; else its records, its notes and the session
    /// commit together (the session goes instead if the sender itself
    /// left), and the links, the relay and the passed-on notes follow.
    fn on_membership<H: DeviceHost>(
        &mut self,
        host: &H,
        from: DeviceId,
        update: SessionUpdate,
        mut w: WriteSet,
        now: Now,
        decide: impl FnOnce(&crate::sync::membership::Group, i64) -> Result<Change, MembershipError>,
    ) -> StepResult<(), H> {
        let change = {
            let _group = host.lock_group();
            let group = meta::group(host, self.me)?;
            let change = decide(&group, now.unix_secs()).unwrap_or_else(|e| {
                self.stats.last_error = Some(format!("membership entry refused: {e}"));
                Change {
                    refused: true,
                    ..Change::default()
                }
            });
            let mut change = change;
            if change.removed.contains(&from) {
                w = WriteSet::new();
            }
            w.append(std::mem::take(&mut change.writes));
            host.commit(w, Commit::Received)?;
            change
        };
        self.stats.rejected += u64::from(change.refused);
        if !change.removed.contains(&from) {
            self.install_session(from, update);
        }
        if change.added.is_empty() && change.removed.is_empty() {
            return Ok(());
        }
        for id in &change.removed {
            self.peer_offline(id);
        }
        self.peers_changed(host, now)
    }

    /// Documents changed (here, or from a peer): offered to every ready
    /// peer except the one each change came from.
    pub fn offer_changed<H: DeviceHost>(
        &mut self,
        host: &H,
        changed: &[((String, DocId), Option<DeviceId>)],
    ) -> StepResult<(), H> {
        if changed.is_empty() {
            return Ok(());
        }
        for id in self.ready_peers() {
            let docs: Vec<(String, DocId)> = changed
                .iter()
                .filter(|(_, from)| *from != Some(id))
                .map(|(d, _)| d.clone())
                .collect();
            if docs.is_empty() {
                continue;
            }
            let batches = self.generate(host, &id, &docs)?;
            self.send_payloads(host, id, &batches, &[])?;
        }
        Ok(())
    }

    /// Every document to every ready peer again (the shell lost track of
    /// what changed).
    pub fn offer_all<H: DeviceHost>(&mut self, host: &H) -> StepResult<(), H> {
        let docs = host.all_docs()?;
        for id in self.ready_peers() {
            let batches = self.generate(host, &id, &docs)?;
            self.send_payloads(host, id, &batches, &[])?;
        }
        Ok(())
    }

    /// The fast timer (about every second): inits unanswered for
    /// `HANDSHAKE_RESEND_AFTER` go again, and busy peers restart.
    pub fn on_retry_tick<H: DeviceHost>(&mut self, host: &H, now: Now) -> StepResult<(), H> {
        self.observe(now);
        if !self.relay_up {
            return Ok(());
        }
        let stale: Vec<(DeviceId, Vec<u8>)> = self
            .links
            .iter_mut()
            .filter_map(|(id, l)| l.on_retry_tick(now.mono).map(|init| (*id, init)))
            .collect();
        for (id, init) in stale {
            self.send_packet(id, init);
        }
        for id in std::mem::take(&mut self.busy) {
            if self.is_online(&id) {
                self.become_ready(host, id)?;
            }
        }
        Ok(())
    }

    /// The resync timer: queued notes go, every ready peer is told our
    /// prefs again (a lost one would stop it offering anything) and the
    /// removal log, and offered every document from the persisted states; a responder whose
    /// initiator never spoke starts over as initiator.
    pub fn on_resync_tick<H: DeviceHost>(&mut self, host: &H, now: Now) -> StepResult<(), H> {
        self.observe(now);
        if !self.relay_up {
            return Ok(());
        }
        self.last_resync = Some(now.mono);
        self.flush_notes(host)?;
        let removal_log = meta::group(host, self.me)?.removal_log();
        for id in self.ready_peers() {
            self.docs.on_resync_tick(&id);
            let mut payloads = vec![self.prefs_payload(host, &id)];
            // The removal log goes again too: a note leaves its queue once
            // sealed, not once delivered, and a removal lost on the way
            // would wait for the next session (a stolen device kept a
            // member's trust meanwhile). Entries are idempotent. Found by
            // the simulator (seed 45: 4 devices, 10 % loss).
            payloads.extend(removal_log.iter().cloned());
            let docs = host.all_docs()?;
            payloads.extend(self.generate(host, &id, &docs)?);
            self.send_payloads(host, id, &payloads, &[])?;
        }
        let kp = &self.kp;
        let fresh: Vec<(DeviceId, Vec<u8>)> = self
            .links
            .iter_mut()
            .filter_map(|(id, l)| l.on_resync_tick(kp, now.mono).map(|init| (*id, init)))
            .collect();
        for (id, init) in fresh {
            self.send_packet(id, init);
        }
        Ok(())
    }

    /// One timer for shells that keep one: the retry tick every call, the
    /// resync tick once per resync interval.
    pub fn on_tick<H: DeviceHost>(&mut self, host: &H, now: Now) -> StepResult<(), H> {
        self.on_retry_tick(host, now)?;
        let due = self
            .last_resync
            .is_none_or(|last| now.mono.saturating_sub(last) >= self.resync_interval);
        if due && self.relay_up {
            if self.last_resync.is_none() {
                // The first tick only starts the interval.
                self.last_resync = Some(now.mono);
                return Ok(());
            }
            self.on_resync_tick(host, now)?;
        }
        Ok(())
    }
}

/// A device's id, short, for [`DeviceStats::recent`].
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
