//! [`PeerLink`]: this device's protocol state with one paired device, as a
//! sans-I/O state machine. Events go in (the peer came online or went
//! away, a packet arrived, a timer fired at time T, payloads to send), and
//! out come packets to send and [`SessionUpdate`]s to persist. The caller
//! owns the socket, the clock and the disk.
//!
//! The one rule the caller must keep: **persist, then commit, then send.**
//! Every step that advances the ratchet returns a [`SessionUpdate`] instead
//! of changing the link. The caller writes [`SessionUpdate::bytes`] to disk
//! (in the same atomic batch as whatever the step's payload changed), then
//! hands the update back with [`PeerLink::commit`], and only then sends the
//! step's packets. So a message is never sent under ratchet state that a
//! crash could roll back, and a received message's effects and the ratchet
//! state that opened it are stored together or not at all. An update the
//! caller could not persist is simply dropped: the session is as before.
//! (Fragment reassembly is not part of it: a payload whose last fragment
//! could not be persisted is lost, and Automerge sync offers it again.)
//!
//! The lifecycle, for one peer:
//! 1. [`online`](PeerLink::online): with a stored session, sync starts
//!    ([`Online::StartSync`]); without one, a handshake init goes out
//!    (unless ours is in flight).
//! 2. A handshake completes ([`Received::Answered`] on the responder,
//!    [`Received::Established`] on the initiator). The initiator speaks
//!    first; the responder starts syncing when its first envelope opens.
//! 3. [`seal`](PeerLink::seal) turns payloads into sealed packets
//!    (fragmenting large ones); [`on_packet`](PeerLink::on_packet) opens
//!    them ([`Received::Opened`], with a payload once all its fragments are
//!    in).
//! 4. Timers: [`on_retry_tick`](PeerLink::on_retry_tick) resends an
//!    unanswered init; [`on_resync_tick`](PeerLink::on_resync_tick) starts
//!    afresh when we are a responder whose initiator never spoke.
//!
//! 5. Replays: the same init again gets the same response from a cache;
//!    an init stamped at or below the highest stamp answered (the init
//!    mark, persisted) is refused with a refusal only the initiator can
//!    check, which makes it start over above the mark. A session replaced
//!    by a handshake stays usable, archived, until the new one speaks.
//!
//! The rules themselves (tie-break, resend timing, fragments) are in
//! [`handshake_rules`](super::handshake_rules) and
//! [`fragments`](super::fragments).

use std::time::Duration;

use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use super::fragments::{Fragmenter, Reassembler, TooLargeToFragment};
use super::handshake_rules::{self as rules, CrossingInit};
use crate::crypto::handshake::{self, PendingHandshake};
use crate::crypto::{CryptoError, DeviceId, DeviceKeypair, Session};
use crate::wire::device::{DevicePacket, SyncPayload, WireError};

/// Why a packet from the peer was refused. The link's sessions and our
/// handshake in flight are unchanged by it (a bad response leaves the
/// handshake pending for the real one); a fragment that arrived before the
/// failure stays in reassembly.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The packet's bytes do not decode.
    #[error("packet: {0}")]
    Packet(#[source] WireError),
    /// A handshake message failed (bad proof, low-order key, ...).
    #[error("handshake: {0}")]
    Handshake(#[source] CryptoError),
    /// A handshake response came while we had no init in flight.
    #[error("handshake response without a handshake")]
    UnexpectedResponse,
    /// A refusal came while we had no init in flight.
    #[error("handshake refusal without a handshake")]
    UnexpectedRefusal,
    /// A sealed envelope came while we have no session.
    #[error("sealed envelope without a session")]
    NoSession,
    /// The envelope does not open (forged, replayed, wrong key, ...).
    #[error("envelope: {0}")]
    Envelope(#[source] CryptoError),
    /// The opened plaintext is not a payload.
    #[error("payload: {0}")]
    Payload(#[source] WireError),
    /// A fragment inside a fragmented payload.
    #[error("nested fragment")]
    NestedFragment,
}

/// Why payloads could not be sealed. The link is unchanged, except as said.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// No session with the peer yet.
    #[error("no session")]
    NoSession,
    /// We are the responder of a session whose initiator never spoke first,
    /// so nothing can be sealed, yet sync had started. The link stops
    /// syncing, so the next [`PeerLink::on_resync_tick`] starts afresh.
    #[error("our responder session cannot send yet")]
    CannotSendYet,
}

/// Ratchet state to persist before [`PeerLink::commit`] and before sending
/// what came with it.
#[must_use = "persist it, then commit it, then send"]
pub struct SessionUpdate {
    /// The session after the step.
    session: Session,
    /// What committing it does besides installing the session.
    kind: UpdateKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UpdateKind {
    /// We answered the peer's init: our own init (if any) is abandoned, and
    /// sync waits for the initiator's first envelope. The init's hash and
    /// our response are kept, to answer that init again the same way.
    Answered {
        /// BLAKE3 of the init answered.
        init: [u8; 32],
        /// The response packet sent.
        response: Vec<u8>,
        /// The init's stamp: the new mark.
        stamp: u64,
    },
    /// Our init was answered: sync may start, the init is done. Carries
    /// the mark as it stands (raised by inits of the peer's that lost to
    /// ours), to store with the session.
    Established {
        /// The init mark to store.
        mark: u64,
    },
    /// Envelopes were sealed: the ratchet advanced.
    Advanced,
    /// An envelope opened with the current session.
    OpenedCurrent,
    /// An envelope opened with the archived previous session: the peer
    /// still uses it, so it becomes current again (and the current one is
    /// archived in its place).
    OpenedPrevious,
}

impl SessionUpdate {
    /// The serialized session to store (wiped on drop).
    pub fn bytes(&self) -> Zeroizing<Vec<u8>> {
        self.session.to_bytes()
    }

    /// The peer's init mark to store with the session
    /// (`layout::meta::stage_init_mark`) and to pass to [`PeerLink::new`]
    /// after a restart: for an answered init, its stamp; for our own
    /// established handshake, the mark as the peer's inits that lost to
    /// ours raised it. An init stamped at or below it is refused from then
    /// on.
    pub fn init_mark(&self) -> Option<u64> {
        match self.kind {
            UpdateKind::Answered { stamp, .. } => Some(stamp),
            UpdateKind::Established { mark } => Some(mark),
            _ => None,
        }
    }
}

impl std::fmt::Debug for SessionUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionUpdate")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// What to do after [`PeerLink::online`].
#[derive(Debug)]
pub enum Online {
    /// Nothing (a handshake of ours is in flight, or sync already runs).
    Nothing,
    /// Send this handshake init.
    Send(Vec<u8>),
    /// Start syncing: send the peer what it lacks ([`PeerLink::seal`]).
    StartSync,
}

/// What a packet from the peer asks of the caller.
#[derive(Debug)]
pub enum Received {
    /// Nothing (their init lost the tie-break against ours).
    Nothing,
    /// Send this packet: our init again (theirs crossed ours, and ours had
    /// gone unanswered long enough that it was probably dropped), a new
    /// init of ours (the peer refused the last as older than its mark), or
    /// the refusal of their init (older than one answered before: a
    /// replay, or their clock and memory both went back).
    Send(Vec<u8>),
    /// We answered their init: persist, commit, then send `response`.
    Answered {
        /// The new session.
        update: SessionUpdate,
        /// The handshake response packet.
        response: Vec<u8>,
    },
    /// Our init was answered: persist, commit, then start syncing.
    Established {
        /// The new session.
        update: SessionUpdate,
    },
    /// An envelope opened: apply `payload` (if complete; a fragment may
    /// leave nothing to apply yet) in the same atomic batch as the update,
    /// commit, then, if `start_sync`, start syncing.
    Opened {
        /// The advanced session.
        update: SessionUpdate,
        /// The payload, once whole.
        payload: Option<SyncPayload>,
        /// This was the first envelope on a session we answered: we may
        /// now send too.
        start_sync: bool,
    },
}

/// Payloads sealed by [`PeerLink::seal`]: persist the update, commit, then
/// send the packets in order.
#[derive(Debug)]
pub struct Sealed {
    /// `DevicePacket::Sealed` packets, in order.
    pub packets: Vec<Vec<u8>>,
    /// The advanced session.
    pub update: SessionUpdate,
    /// Payloads too large even for fragments, left out.
    pub dropped: Vec<TooLargeToFragment>,
    /// Sealing stopped early (the chain is exhausted); `packets` holds
    /// what was sealed before.
    pub stopped: Option<CryptoError>,
}

/// Our handshake in flight.
struct InitInFlight {
    /// The handshake's secret state.
    handshake: PendingHandshake,
    /// The init packet, kept to send again.
    packet: Vec<u8>,
    /// The init itself (the packet's body), which a refusal names.
    init: Vec<u8>,
    /// When it was last sent (the caller's time).
    sent_at: Duration,
}

/// This device's protocol state with one paired device.
pub struct PeerLink {
    /// Our device id (the tie-break needs it).
    me: DeviceId,
    /// The peer's device id.
    peer: DeviceId,
    /// The peer's static public key.
    public: PublicKey,
    /// The relay reports the peer online.
    online: bool,
    /// The Double Ratchet session, once a handshake completed (persisted
    /// by the caller through [`SessionUpdate`]s).
    session: Option<Session>,
    /// The session before the last handshake, archived (as libsignal keeps
    /// previous session states): envelopes the peer sealed with it before
    /// it knew of the new one still open, and if the peer goes on using it
    /// (the new handshake was a replayed init the peer never made), it
    /// becomes current again. Dropped once an envelope on a newer current
    /// session opens. Kept in memory only: after a restart the current
    /// session is all there is, as before.
    previous: Option<Session>,
    /// The current session is newer than `previous` (it came from the last
    /// handshake); each promotion of `previous` swaps the two, and this.
    current_is_newer: bool,
    /// Our handshake in flight.
    pending: Option<InitInFlight>,
    /// The last init we answered (its BLAKE3) and our response: the same
    /// init again (the peer resent it, or the relay replays it) gets the
    /// same response and changes nothing here. Answering it afresh made a
    /// second session, leaving the two sides on different ones.
    answered: Option<([u8; 32], Vec<u8>)>,
    /// The highest stamp of an init of the peer's that we answered or that
    /// lost to ours (persisted by the caller: [`SessionUpdate::init_mark`]).
    /// An init stamped at or below it is refused (unless it is the very
    /// init just answered, see `answered`).
    init_mark: u64,
    /// The stamp of our next init to the peer: from the caller's wall
    /// clock when the link was made, one more per init, and above the
    /// peer's mark after it refused one of ours.
    next_stamp: u64,
    /// Sync runs: the session can send and the initial sync was offered.
    ready: bool,
    /// The peer's envelopes that failed to open since the last one that
    /// opened (or since the current session began).
    refused_since_opened: u32,
    /// An envelope of the peer's opened since the last resync round.
    opened_this_round: bool,
    /// Numbers the payloads we fragment for this peer.
    fragmenter: Fragmenter,
    /// The peer's fragmented payload being put back together.
    reassembler: Reassembler,
}

impl PeerLink {
    /// The link with the peer whose static key is `public`, with the
    /// session stored for it, if any, and the peer's stored init mark (0
    /// if none). `now_ms` is the wall clock (milliseconds since the Unix
    /// epoch): our inits are stamped from it. Offline until
    /// [`online`](Self::online).
    pub fn new(
        me: DeviceId,
        public: PublicKey,
        session: Option<Session>,
        init_mark: u64,
        now_ms: u64,
    ) -> Self {
        PeerLink {
            me,
            peer: DeviceId::from_public(&public),
            public,
            online: false,
            session,
            previous: None,
            current_is_newer: false,
            pending: None,
            answered: None,
            init_mark,
            next_stamp: now_ms.max(1),
            ready: false,
            refused_since_opened: 0,
            opened_this_round: false,
            fragmenter: Fragmenter::new(),
            reassembler: Reassembler::default(),
        }
    }

    /// The wall clock moved on (ms since the Unix epoch): our next init is
    /// stamped at least from it. For a shell that made the link before it
    /// knew the time (a page opens its store before its first request's
    /// clock).
    pub fn observe_wall_clock(&mut self, now_ms: u64) {
        self.next_stamp = self.next_stamp.max(now_ms);
    }

    /// The peer's device id.
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// Whether the relay reports the peer online.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Whether sync runs with the peer.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether a session exists (established or answered).
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// The peer came online (or we reconnected and it is there).
    pub fn online(&mut self, kp: &DeviceKeypair, now: Duration) -> Online {
        self.online = true;
        if self.session.is_some() {
            if self.start_sync() {
                Online::StartSync
            } else {
                Online::Nothing
            }
        } else if self.pending.is_none() {
            Online::Send(self.initiate(kp, now))
        } else {
            Online::Nothing
        }
    }

    /// The peer went offline, or our relay connection ended: sync stops,
    /// an init in flight is abandoned, a partial payload is dropped. The
    /// session stays.
    pub fn offline(&mut self) {
        self.online = false;
        self.ready = false;
        self.pending = None;
        self.reassembler = Reassembler::default();
    }

    /// Messages to the peer were lost while it stays online (the relay
    /// refused them as busy or rate limited). Returns whether sync was
    /// running; if so it stops, and [`start_sync`](Self::start_sync) later
    /// starts it over.
    pub fn lost_messages(&mut self) -> bool {
        let was = self.ready;
        if was {
            self.ready = false;
            self.reassembler = Reassembler::default();
        }
        was
    }

    /// Marks sync as running if it can start (online, not yet running).
    /// True: the caller sends the initial sync ([`seal`](Self::seal)).
    pub fn start_sync(&mut self) -> bool {
        if self.ready || !self.online {
            return false;
        }
        self.ready = true;
        true
    }

    fn initiate(&mut self, kp: &DeviceKeypair, now: Duration) -> Vec<u8> {
        let stamp = self.next_stamp;
        self.next_stamp = stamp.saturating_add(1);
        let (handshake, init) = handshake::initiate(kp, &self.public, stamp);
        let packet = DevicePacket::HandshakeInit(init.clone()).encode();
        self.pending = Some(InitInFlight {
            handshake,
            packet: packet.clone(),
            init,
            sent_at: now,
        });
        packet
    }

    /// The retry timer: our init, if unanswered for
    /// [`HANDSHAKE_RESEND_AFTER`](rules::HANDSHAKE_RESEND_AFTER) while the
    /// peer is online, to send again.
    pub fn on_retry_tick(&mut self, now: Duration) -> Option<Vec<u8>> {
        if !self.online {
            return None;
        }
        let p = self.pending.as_mut()?;
        if !rules::init_is_stale(p.sent_at, now) {
            return None;
        }
        p.sent_at = now;
        Some(p.packet.clone())
    }

    /// The resync timer: if we are a silent responder (see
    /// [`responder_is_silent`](rules::responder_is_silent)) or the session
    /// is stuck (see [`session_is_stuck`](rules::session_is_stuck)), the
    /// session is dropped and a fresh init returned to send.
    pub fn on_resync_tick(&mut self, kp: &DeviceKeypair, now: Duration) -> Option<Vec<u8>> {
        let silent = self.session.as_ref().is_some_and(|s| {
            rules::responder_is_silent(
                self.online,
                self.ready,
                self.pending.is_some(),
                s.can_send(),
            )
        });
        let stuck = self.session.is_some()
            && rules::session_is_stuck(
                self.online,
                self.pending.is_some(),
                self.refused_since_opened,
                self.opened_this_round,
            );
        self.opened_this_round = false;
        if !silent && !stuck {
            return None;
        }
        self.refused_since_opened = 0;
        self.ready = false;
        self.session = None;
        self.answered = None; // its session is gone (its init stays below the mark)
        Some(self.initiate(kp, now))
    }

    /// A packet from the peer.
    pub fn on_packet(
        &mut self,
        kp: &DeviceKeypair,
        bytes: &[u8],
        now: Duration,
    ) -> Result<Received, LinkError> {
        match DevicePacket::decode(bytes).map_err(LinkError::Packet)? {
            DevicePacket::HandshakeInit(init) => self.on_init(kp, &init, now),
            DevicePacket::HandshakeResponse(resp) => {
                // A bad response (forged, or meant for an older init)
                // leaves our handshake pending: the real one still
                // completes it. It is done once the session is committed.
                let Some(p) = self.pending.as_ref() else {
                    return Err(LinkError::UnexpectedResponse);
                };
                let session = p.handshake.finish(&resp).map_err(LinkError::Handshake)?;
                Ok(Received::Established {
                    update: SessionUpdate {
                        session,
                        kind: UpdateKind::Established {
                            mark: self.init_mark,
                        },
                    },
                })
            }
            DevicePacket::Sealed(env) => {
                let received = self.on_sealed(&env);
                if matches!(received, Err(LinkError::Envelope(_))) {
                    self.refused_since_opened = self.refused_since_opened.saturating_add(1);
                }
                received
            }
            DevicePacket::InitRefused(refusal) => {
                // Only a refusal the peer made of our init in flight counts
                // (a replayed or forged one changes nothing): we start over
                // above its mark.
                let Some(p) = self.pending.as_ref() else {
                    return Err(LinkError::UnexpectedRefusal);
                };
                let mark = handshake::read_refusal(kp, &self.public, &p.init, &refusal)
                    .map_err(LinkError::Handshake)?;
                if mark == u64::MAX {
                    // No stamp is above it: starting over would only be
                    // refused again.
                    return Err(LinkError::Handshake(CryptoError::Handshake(
                        "refused with the highest mark",
                    )));
                }
                self.next_stamp = self.next_stamp.max(mark + 1);
                Ok(Received::Send(self.initiate(kp, now)))
            }
        }
    }

    fn on_init(
        &mut self,
        kp: &DeviceKeypair,
        init: &[u8],
        now: Duration,
    ) -> Result<Received, LinkError> {
        let digest = *blake3::hash(init).as_bytes();
        if let Some((answered, response)) = &self.answered {
            if *answered == digest {
                return Ok(Received::Send(response.clone()));
            }
        }
        if let Some(p) = self.pending.as_mut() {
            let keep = match rules::on_crossing_init(&self.me, &self.peer, p.sent_at, now) {
                CrossingInit::AnswerTheirs => None,
                CrossingInit::KeepOurs { resend: false } => Some(Received::Nothing),
                CrossingInit::KeepOurs { resend: true } => {
                    p.sent_at = now;
                    Some(Received::Send(p.packet.clone()))
                }
            };
            if let Some(keep) = keep {
                // Their init loses, unanswered; if it is theirs, its stamp
                // still raises the mark, or a relay could replay it later
                // and have it answered (stored with our handshake's
                // update).
                let stamp =
                    handshake::verify_init(kp, &self.public, init).map_err(LinkError::Handshake)?;
                self.init_mark = self.init_mark.max(stamp);
                return Ok(keep);
            }
        }
        let (session, response) =
            handshake::respond(kp, &self.public, init).map_err(LinkError::Handshake)?;
        // The init is the peer's (its proof held), so its stamp is too.
        let stamp =
            handshake::init_stamp(init).ok_or(LinkError::Handshake(CryptoError::Truncated))?;
        if stamp <= self.init_mark {
            // Older than an init answered (or seen lose) before: a replay,
            // which must not make a session, or a peer whose clock and
            // memory both went back, which starts over above the mark
            // once told.
            drop(session);
            let refusal = handshake::refuse(kp, &self.public, init, self.init_mark)
                .map_err(LinkError::Handshake)?;
            return Ok(Received::Send(DevicePacket::InitRefused(refusal).encode()));
        }
        let response = DevicePacket::HandshakeResponse(response).encode();
        Ok(Received::Answered {
            update: SessionUpdate {
                session,
                kind: UpdateKind::Answered {
                    init: digest,
                    response: response.clone(),
                    stamp,
                },
            },
            response,
        })
    }

    fn on_sealed(&mut self, env: &[u8]) -> Result<Received, LinkError> {
        let (next, plaintext, kind) = match (self.session.as_ref(), self.previous.as_ref()) {
            (None, None) => return Err(LinkError::NoSession),
            (current, previous) => {
                // The current session first; the archived one if that fails
                // (the current's error is the one reported).
                let mut err = None;
                let mut opened = None;
                for (s, kind) in [
                    (current, UpdateKind::OpenedCurrent),
                    (previous, UpdateKind::OpenedPrevious),
                ] {
                    let Some(s) = s else { continue };
                    let mut next = s.clone();
                    match next.open(env) {
                        Ok(pt) => {
                            opened = Some((next, pt, kind));
                            break;
                        }
                        Err(e) => {
                            err.get_or_insert(e);
                        }
                    }
                }
                match opened {
                    Some(o) => o,
                    None => {
                        return Err(err.map_or(LinkError::NoSession, LinkError::Envelope));
                    }
                }
            }
        };
        let payload = SyncPayload::decode(&plaintext).map_err(LinkError::Payload)?;
        let payload = match payload {
            SyncPayload::Fragment {
                id,
                index,
                total,
                bytes,
            } => match self.reassembler.push(id, index, total, bytes) {
                Some(whole) => match SyncPayload::decode(&whole).map_err(LinkError::Payload)? {
                    SyncPayload::Fragment { .. } => return Err(LinkError::NestedFragment),
                    p => Some(p),
                },
                None => None,
            },
            p => Some(p),
        };
        Ok(Received::Opened {
            update: SessionUpdate {
                session: next,
                kind,
            },
            // The responder starts syncing once a whole payload from the
            // initiator opened (a lone fragment only advances the ratchet).
            start_sync: !self.ready && payload.is_some(),
            payload,
        })
    }

    /// Seals `payloads` for the peer, fragmenting large ones. Nothing
    /// changes until the returned update is committed.
    pub fn seal(&mut self, payloads: &[SyncPayload]) -> Result<Sealed, SealError> {
        let Some(session) = self.session.as_ref() else {
            return Err(SealError::NoSession);
        };
        if self.ready && !session.can_send() {
            self.ready = false;
            return Err(SealError::CannotSendYet);
        }
        let mut plaintexts = Vec::new();
        let mut dropped = Vec::new();
        for p in payloads {
            match self.fragmenter.split(p) {
                Ok(parts) => plaintexts.extend(parts),
                Err(e) => dropped.push(e),
            }
        }
        let mut next = session.clone();
        let mut packets = Vec::with_capacity(plaintexts.len());
        let mut stopped = None;
        for pt in &plaintexts {
            match next.seal(pt) {
                Ok(env) => packets.push(DevicePacket::Sealed(env).encode()),
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        Ok(Sealed {
            packets,
            update: SessionUpdate {
                session: next,
                kind: UpdateKind::Advanced,
            },
            dropped,
            stopped,
        })
    }

    /// Installs an update the caller has persisted.
    pub fn commit(&mut self, update: SessionUpdate) {
        match update.kind {
            UpdateKind::Answered {
                init,
                response,
                stamp,
            } => {
                self.init_mark = self.init_mark.max(stamp);
                self.pending = None;
                self.ready = false;
                self.answered = Some((init, response));
                self.archive_current();
            }
            UpdateKind::Established { .. } => {
                self.pending = None;
                self.ready = false;
                // The answered init's session is replaced by ours.
                self.answered = None;
                self.archive_current();
            }
            UpdateKind::Advanced => {}
            UpdateKind::OpenedCurrent => {
                self.note_opened();
                if self.current_is_newer {
                    // The peer speaks on the new session: the old one is done.
                    self.previous = None;
                }
            }
            UpdateKind::OpenedPrevious => {
                self.note_opened();
                // The peer still uses the archived session: it is current
                // again, and the one that replaced it is archived (it may yet
                // be used, if the peer was only slow to switch).
                self.previous = self.session.take();
                self.current_is_newer = !self.current_is_newer;
            }
        }
        self.session = Some(update.session);
    }

    /// An envelope of the peer's opened: the session is not stuck.
    fn note_opened(&mut self) {
        self.refused_since_opened = 0;
        self.opened_this_round = true;
    }

    /// A handshake replaces the current session: it is archived (an
    /// archived one already there is kept if there is no current one).
    fn archive_current(&mut self) {
        self.refused_since_opened = 0;
        if let Some(old) = self.session.take() {
            self.previous = Some(old);
        }
        self.current_is_newer = true;
    }
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink")
            .field("peer", &self.peer)
            .field("online", &self.online)
            .field("session", &self.session.is_some())
            .field("previous", &self.previous.is_some())
            .field("pending", &self.pending.is_some())
            .field("ready", &self.ready)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    //! Two devices, each a [`PeerLink`] plus a "disk" (the last persisted
    //! session) and the payloads it applied, joined by a hand-driven
    //! network that can lose, duplicate and reorder packets. No socket, no
    //! thread, no clock: time is a number the test advances.
    use super::*;
    use crate::wire::device::DocMessage;

    struct Dev {
        kp: DeviceKeypair,
        link: PeerLink,
        /// The session as last persisted.
        disk: Option<Vec<u8>>,
        /// The peer's init mark as last persisted.
        mark: u64,
        /// Payloads applied, in order.
        applied: Vec<SyncPayload>,
    }

    /// The wall clock when the links are made (ms since the epoch), and a
    /// later one for a device that restarts.
    const WALL: u64 = 1_800_000_000_000;
    const LATER: u64 = WALL + 60_000;

    fn pair() -> (Dev, Dev) {
        let (ka, kb) = (DeviceKeypair::generate(), DeviceKeypair::generate());
        let a = PeerLink::new(ka.device_id(), kb.public(), None, 0, WALL);
        let b = PeerLink::new(kb.device_id(), ka.public(), None, 0, WALL);
        let dev = |kp, link| Dev {
            kp,
            link,
            disk: None,
            mark: 0,
            applied: Vec::new(),
        };
        (dev(ka, a), dev(kb, b))
    }

    fn hello(d: &Dev) -> SyncPayload {
        SyncPayload::Hello {
            name: d.kp.device_id().to_string(),
        }
    }

    fn batch(tag: &str, size: usize) -> SyncPayload {
        SyncPayload::Batch(vec![DocMessage {
            app: "app".into(),
            doc: tag.into(),
            msg: vec![7; size],
        }])
    }

    impl Dev {
        fn persist_commit(&mut self, update: SessionUpdate) {
            self.disk = Some(update.bytes().to_vec());
            if let Some(mark) = update.init_mark() {
                self.mark = mark;
            }
            self.link.commit(update);
        }

        /// Seals and "sends" payloads (persist, commit, then the packets).
        fn send(&mut self, payloads: &[SyncPayload]) -> Vec<Vec<u8>> {
            let sealed = self.link.seal(payloads).unwrap();
            assert!(sealed.stopped.is_none() && sealed.dropped.is_empty());
            self.persist_commit(sealed.update);
            sealed.packets
        }

        /// Restarts from `disk` (a persisted session) as a new link, later.
        fn restart_from(&mut self, disk: &[u8], peer: &Dev) {
            let session = Session::from_bytes(disk).unwrap();
            self.link = PeerLink::new(
                self.kp.device_id(),
                peer.kp.public(),
                Some(session),
                self.mark,
                LATER,
            );
        }

        fn start_sync(&mut self) -> Vec<Vec<u8>> {
            let h = hello(self);
            self.send(&[h])
        }

        fn online(&mut self, now: Duration) -> Vec<Vec<u8>> {
            match self.link.online(&self.kp, now) {
                Online::Nothing => vec![],
                Online::Send(p) => vec![p],
                Online::StartSync => self.start_sync(),
            }
        }

        /// Delivers one packet; returns the packets it answers with.
        fn deliver(&mut self, packet: &[u8], now: Duration) -> Result<Vec<Vec<u8>>, LinkError> {
            Ok(match self.link.on_packet(&self.kp, packet, now)? {
                Received::Nothing => vec![],
                Received::Send(p) => vec![p],
                Received::Answered { update, response } => {
                    self.persist_commit(update);
                    vec![response]
                }
                Received::Established { update } => {
                    self.persist_commit(update);
                    assert!(self.link.start_sync());
                    self.start_sync()
                }
                Received::Opened {
                    update,
                    payload,
                    start_sync,
                } => {
                    self.applied.extend(payload);
                    self.persist_commit(update);
                    if start_sync && self.link.start_sync() {
                        self.start_sync()
                    } else {
                        vec![]
                    }
                }
            })
        }
    }

    /// Delivers everything in flight both ways until nothing is left.
    fn settle(
        a: &mut Dev,
        b: &mut Dev,
        mut to_b: Vec<Vec<u8>>,
        mut to_a: Vec<Vec<u8>>,
        now: Duration,
    ) {
        for _ in 0..20 {
            if to_a.is_empty() && to_b.is_empty() {
                return;
            }
            let mut next_a = Vec::new();
            for p in to_b.drain(..) {
                next_a.extend(b.deliver(&p, now).unwrap());
            }
            for p in to_a.drain(..) {
                to_b.extend(a.deliver(&p, now).unwrap());
            }
            to_a = next_a;
        }
        panic!("the exchange did not settle");
    }

    fn assert_synced(a: &mut Dev, b: &mut Dev, now: Duration) {
        assert!(
            a.link.is_ready() && b.link.is_ready(),
            "{:?} {:?}",
            a.link,
            b.link
        );
        let to_b = a.send(&[batch("from-a", 10)]);
        let to_a = b.send(&[batch("from-b", 10)]);
        settle(a, b, to_b, to_a, now);
        assert_eq!(a.applied.last(), Some(&batch("from-b", 10)));
        assert_eq!(b.applied.last(), Some(&batch("from-a", 10)));
    }

    const T0: Duration = Duration::from_secs(1000);

    #[test]
    fn both_online_at_once_end_in_one_session_and_sync() {
        let (mut a, mut b) = pair();
        let to_b = a.online(T0);
        let to_a = b.online(T0);
        assert_eq!((to_b.len(), to_a.len()), (1, 1), "both start a handshake");
        settle(&mut a, &mut b, to_b, to_a, T0);
        // Each applied the other's hello.
        assert_eq!(a.applied, vec![hello(&b)]);
        assert_eq!(b.applied, vec![hello(&a)]);
        assert_synced(&mut a, &mut b, T0);
    }

    #[test]
    fn a_lost_init_is_resent_by_the_retry_timer_only_after_the_delay() {
        let (mut a, mut b) = pair();
        let _lost = a.online(T0);
        assert_eq!(b.online(T0).len(), 1, "b starts its own handshake");
        // b's own init is lost too: nothing arrives anywhere.
        let early = T0 + rules::HANDSHAKE_RESEND_AFTER;
        assert_eq!(a.link.on_retry_tick(early), None);
        let later = early + Duration::from_millis(1);
        let again_a = a.link.on_retry_tick(later).unwrap();
        let again_b = b.link.on_retry_tick(later).unwrap();
        settle(&mut a, &mut b, vec![again_a], vec![again_b], later);
        assert_synced(&mut a, &mut b, later);
    }

    #[test]
    fn duplicated_and_reordered_envelopes_open_once_each() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        let p1 = a.send(&[batch("one", 5)]);
        let p2 = a.send(&[batch("two", 5)]);
        let before = b.applied.len();
        // Reordered: two before one; then one again (a duplicate).
        b.deliver(&p2[0], T0).unwrap();
        b.deliver(&p1[0], T0).unwrap();
        let session = b.link.session.as_ref().unwrap().to_bytes();
        assert!(matches!(b.deliver(&p1[0], T0), Err(LinkError::Envelope(_))));
        assert_eq!(
            b.link.session.as_ref().unwrap().to_bytes(),
            session,
            "a refused envelope changes nothing"
        );
        assert_eq!(b.applied[before..], [batch("two", 5), batch("one", 5)]);
        assert_synced(&mut a, &mut b, T0);
    }

    #[test]
    fn a_large_payload_travels_as_fragments_in_any_order() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        let big = batch("big", 3 * super::super::fragments::MAX_ENVELOPE_PLAINTEXT);
        let mut packets = a.send(std::slice::from_ref(&big));
        assert_eq!(packets.len(), 4);
        packets.swap(0, 3);
        let before = b.applied.len();
        for p in &packets {
            b.deliver(p, T0).unwrap();
        }
        assert_eq!(b.applied[before..], [big]);
    }

    #[test]
    fn a_responder_whose_initiator_never_spoke_starts_afresh_on_the_resync_tick() {
        let (mut a, mut b) = pair();
        // Only a starts (b knows a's init first); b answers; a's first
        // envelope (its hello) is lost.
        let init = a.online(T0);
        b.link.online = true;
        let response = b.deliver(&init[0], T0).unwrap();
        let _lost_hello = a.deliver(&response[0], T0).unwrap();
        assert!(a.link.is_ready() && !b.link.is_ready());
        // b cannot send; its resync tick drops the session and starts over.
        let fresh = b.link.on_resync_tick(&b.kp, T0).expect("a fresh init");
        assert!(!b.link.has_session());
        // a (syncing, no init of its own in flight) answers b's init.
        settle(&mut a, &mut b, vec![], vec![fresh], T0);
        // a answered, so a waits for b's first envelope, which b sent at
        // once (hello); then a syncs too.
        assert_synced(&mut a, &mut b, T0);
    }

    #[test]
    fn a_link_restored_from_its_persisted_session_keeps_talking() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        // a restarts: a new link from what it persisted.
        let disk = a.disk.clone().unwrap();
        a.restart_from(&disk, &b);
        b.link.offline();
        let to_b = a.online(T0);
        let to_a = b.online(T0);
        // Both have a session: each sends its hello at once, no handshake.
        assert_eq!((to_b.len(), to_a.len()), (1, 1));
        settle(&mut a, &mut b, to_b, to_a, T0);
        assert_synced(&mut a, &mut b, T0);
    }

    /// Delivers each packet, keeping the refusals: how many were refused.
    fn deliver_all(to: &mut Dev, packets: Vec<Vec<u8>>, now: Duration) -> usize {
        packets
            .iter()
            .filter(|p| to.deliver(p, now).is_err())
            .count()
    }

    #[test]
    fn a_session_restored_from_an_older_disk_is_replaced_on_the_resync_tick() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        let old_disk = a.disk.clone().unwrap();
        // Both ratchets move on (each reply is a DH step).
        for k in 0..3 {
            let p = a.send(&[batch(&format!("a{k}"), 5)]);
            assert_eq!(deliver_all(&mut b, p, T0), 0);
            let p = b.send(&[batch(&format!("b{k}"), 5)]);
            assert_eq!(deliver_all(&mut a, p, T0), 0);
        }
        // a's disk goes back to the older copy (a restored backup).
        a.restart_from(&old_disk, &b);
        b.link.offline();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        let mut refused = deliver_all(&mut b, to_b, T0) + deliver_all(&mut a, to_a, T0);
        for k in 0..3 {
            let p = a.send(&[batch(&format!("late a{k}"), 5)]);
            refused += deliver_all(&mut b, p, T0);
            let p = b.send(&[batch(&format!("late b{k}"), 5)]);
            refused += deliver_all(&mut a, p, T0);
        }
        // Neither can open the other's envelopes any more.
        assert!(
            refused >= 2 * rules::STUCK_AFTER_REFUSALS as usize,
            "{refused}"
        );
        // The resync round finds the session stuck and starts afresh.
        let later = T0 + Duration::from_secs(30);
        let to_b: Vec<_> = a.link.on_resync_tick(&a.kp, later).into_iter().collect();
        let to_a: Vec<_> = b.link.on_resync_tick(&b.kp, later).into_iter().collect();
        assert!(!to_b.is_empty() || !to_a.is_empty(), "nobody started over");
        settle(&mut a, &mut b, to_b, to_a, later);
        assert_synced(&mut a, &mut b, later);
    }

    #[test]
    fn a_working_session_with_a_few_strays_is_kept() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        // Replays of old envelopes are refused, but real ones open too.
        let p = a.send(&[batch("one", 5)]);
        assert_eq!(deliver_all(&mut b, p.clone(), T0), 0);
        for _ in 0..rules::STUCK_AFTER_REFUSALS {
            assert_eq!(deliver_all(&mut b, p.clone(), T0), 1);
        }
        let later = T0 + Duration::from_secs(30);
        assert!(b.link.on_resync_tick(&b.kp, later).is_none());
        assert!(b.link.has_session());
    }

    #[test]
    fn an_update_that_was_not_persisted_leaves_the_link_as_it_was() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        // a seals, but its disk write fails: the update is dropped, nothing sent.
        let never = a.link.seal(&[batch("never", 3)]).unwrap();
        let never_packet = never.packets[0].clone();
        drop(never.update);
        // The next seal takes the same ratchet position, and b opens it.
        let p = a.send(&[batch("sent", 3)]);
        b.deliver(&p[0], T0).unwrap();
        assert_eq!(b.applied.last(), Some(&batch("sent", 3)));
        // Had the dropped seal advanced a's chain, "sent" would sit one
        // position later and b would keep a skipped key that opens "never".
        // It took the same position, so "never" is a replay to b.
        assert!(matches!(
            b.deliver(&never_packet, T0),
            Err(LinkError::Envelope(_))
        ));
    }

    #[test]
    fn an_opened_envelope_that_was_not_persisted_can_be_opened_again() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        let p = a.send(&[batch("once", 3)]);
        // b opens it but cannot persist: the update is dropped...
        let Received::Opened { update, .. } = b.link.on_packet(&b.kp, &p[0], T0).unwrap() else {
            panic!("an opened envelope");
        };
        drop(update);
        // ...so the redelivered envelope still opens (it is not a replay).
        b.deliver(&p[0], T0).unwrap();
        assert_eq!(b.applied.last(), Some(&batch("once", 3)));
    }

    #[test]
    fn a_stale_winning_init_is_resent_when_the_loser_starts() {
        let (mut a, mut b) = pair();
        if !handshake::initiator_wins(&a.kp.device_id(), &b.kp.device_id()) {
            std::mem::swap(&mut a, &mut b);
        }
        let _dropped = a.online(T0);
        let later = T0 + Duration::from_secs(10);
        let from_b = b.online(later);
        let again = a.deliver(&from_b[0], later).unwrap();
        assert_eq!(again.len(), 1, "the winner sends its own init again");
        settle(&mut a, &mut b, again, vec![], later);
        assert_synced(&mut a, &mut b, later);
    }

    #[test]
    fn lost_messages_stop_sync_until_it_is_started_again() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        assert!(a.link.lost_messages(), "sync was running");
        assert!(!a.link.is_ready() && !a.link.lost_messages());
        assert!(a.link.start_sync());
        let hello = a.start_sync();
        settle(&mut a, &mut b, hello, vec![], T0);
        assert_synced(&mut a, &mut b, T0);
    }

    #[test]
    fn going_offline_abandons_our_init_and_a_partial_payload() {
        let (mut a, mut b) = pair();
        let init = a.online(T0);
        assert_eq!(init.len(), 1);
        a.link.offline();
        assert!(a.link.pending.is_none() && !a.link.is_online());
        // No resend while offline; a new init when it comes back.
        let t1 = T0 + Duration::from_secs(60);
        assert_eq!(a.link.on_retry_tick(t1), None);
        let to_b = a.online(t1);
        let to_a = b.online(t1);
        settle(&mut a, &mut b, to_b, to_a, t1);
        // A partial payload is dropped with the connection.
        let big = batch("big", 2 * super::super::fragments::MAX_ENVELOPE_PLAINTEXT);
        let parts = a.send(std::slice::from_ref(&big));
        b.deliver(&parts[0], t1).unwrap();
        assert!(b.link.reassembler.in_progress());
        b.link.offline();
        assert!(!b.link.reassembler.in_progress());
    }

    #[test]
    fn a_ready_responder_that_cannot_send_stops_and_starts_afresh() {
        let (mut a, mut b) = pair();
        let init = a.online(T0);
        b.link.online = true;
        let _response_lost = b.deliver(&init[0], T0).unwrap();
        // Sync was (wrongly) started on b's responder session.
        assert!(b.link.start_sync());
        let h = hello(&b);
        assert!(matches!(b.link.seal(&[h]), Err(SealError::CannotSendYet)));
        assert!(!b.link.is_ready());
        let later = T0 + Duration::from_secs(10);
        let fresh = b.link.on_resync_tick(&b.kp, later).expect("a fresh init");
        // a's own init is still unanswered, so the two cross: if a wins it
        // sends its (stale) init again and b answers it; else a answers b's.
        settle(&mut a, &mut b, vec![], vec![fresh], later);
        assert_synced(&mut a, &mut b, later);
    }

    #[test]
    fn a_forged_response_leaves_the_handshake_pending_and_the_real_one_completes_it() {
        let (mut a, mut b) = pair();
        let init = a.online(T0);
        assert_eq!(init.len(), 1);
        b.link.online = true;
        let response = b.deliver(&init[0], T0).unwrap();
        // Right version and length, wrong confirmation.
        let mut forged = response[0].clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(a.deliver(&forged, T0).is_err());
        assert!(
            a.link.pending.is_some(),
            "the forged response killed the handshake"
        );
        let hello = a.deliver(&response[0], T0).unwrap();
        assert!(a.link.pending.is_none());
        settle(&mut a, &mut b, hello, vec![], T0);
        assert_synced(&mut a, &mut b, T0);
        // The real response again (a replay): refused, nothing changes.
        let session = a.link.session.as_ref().unwrap().to_bytes();
        assert!(a.deliver(&response[0], T0).is_err());
        assert_eq!(a.link.session.as_ref().unwrap().to_bytes(), session);
    }

    #[test]
    fn a_repeated_init_gets_the_same_answer_and_keeps_the_session() {
        let (mut a, mut b) = pair();
        let init = a.online(T0);
        b.link.online = true;
        let response = b.deliver(&init[0], T0).unwrap();
        let answered = b.link.session.as_ref().unwrap().to_bytes();
        // Resent by A's retry timer, or replayed by the relay: the same
        // answer, and B stays on the session A will establish.
        assert_eq!(b.deliver(&init[0], T0).unwrap(), response);
        assert_eq!(b.link.session.as_ref().unwrap().to_bytes(), answered);
        let hello = a.deliver(&response[0], T0).unwrap();
        settle(&mut a, &mut b, hello, vec![], T0);
        assert_synced(&mut a, &mut b, T0);
        // Replayed again once sync runs: the session and sync go on.
        let before = b.link.session.as_ref().unwrap().to_bytes();
        let again = b.deliver(&init[0], T0).unwrap();
        assert_eq!(b.link.session.as_ref().unwrap().to_bytes(), before);
        assert!(
            a.deliver(&again[0], T0).is_err(),
            "A has no handshake pending"
        );
        assert_synced(&mut a, &mut b, T0);
    }

    #[test]
    fn a_replayed_older_init_does_not_take_the_working_session_away() {
        let (mut a, mut b) = pair();
        b.link.online = true;
        // A's first init never arrives (the relay keeps it); A goes away
        // and comes back with a second one, and the two sync.
        let old_init = a.online(T0);
        a.link.offline();
        let init = a.online(T0);
        let response = b.deliver(&init[0], T0).unwrap();
        let hello = a.deliver(&response[0], T0).unwrap();
        settle(&mut a, &mut b, hello, vec![], T0);
        assert_synced(&mut a, &mut b, T0);
        // The relay replays the first init: it is A's (its proof holds),
        // but stamped below the one B answered, so B refuses it and makes
        // no session...
        let session = b.link.session.as_ref().unwrap().to_bytes();
        let refusal = b.deliver(&old_init[0], T0).unwrap();
        assert!(matches!(
            DevicePacket::decode(&refusal[0]),
            Ok(DevicePacket::InitRefused(_))
        ));
        assert_eq!(b.link.session.as_ref().unwrap().to_bytes(), session);
        assert!(b.link.previous.is_none());
        // ...and A, with no init in flight, ignores the refusal.
        assert!(matches!(
            a.deliver(&refusal[0], T0),
            Err(LinkError::UnexpectedRefusal)
        ));
        // What A sends on the real session opens at B: no gap.
        let to_b = a.send(&[batch("after-replay", 10)]);
        let to_a = b.deliver(&to_b[0], T0).unwrap();
        assert_eq!(b.applied.last(), Some(&batch("after-replay", 10)));
        settle(&mut a, &mut b, vec![], to_a, T0);
        assert_synced(&mut a, &mut b, T0);
        // B restarts from what it persisted: the replay is still refused.
        let b_kp = DeviceKeypair::from_secret_bytes(*b.kp.secret_bytes());
        let stored = Session::from_bytes(b.disk.as_ref().unwrap()).unwrap();
        b.link = PeerLink::new(b_kp.device_id(), a.kp.public(), Some(stored), b.mark, LATER);
        let refusal = b.deliver(&old_init[0], T0).unwrap();
        assert!(matches!(
            DevicePacket::decode(&refusal[0]),
            Ok(DevicePacket::InitRefused(_))
        ));
    }

    #[test]
    fn envelopes_of_the_previous_session_open_until_the_new_one_speaks() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        assert_synced(&mut a, &mut b, T0);
        // Two envelopes of A's on the first session are on their way when
        // A starts over (its store restored without the session).
        let late = a.send(&[batch("late-1", 5), batch("late-2", 5)]);
        let a_kp = DeviceKeypair::from_secret_bytes(*a.kp.secret_bytes());
        a.link = PeerLink::new(a_kp.device_id(), b.kp.public(), None, 0, LATER);
        let init = a.online(T0);
        let response = b.deliver(&init[0], T0).unwrap();
        // The first late envelope opens at B (archived session).
        b.deliver(&late[0], T0).unwrap();
        assert_eq!(b.applied.last(), Some(&batch("late-1", 5)));
        // The new session speaks; after that, the old one is done.
        let hello = a.deliver(&response[0], T0).unwrap();
        settle(&mut a, &mut b, hello, vec![], T0);
        assert_synced(&mut a, &mut b, T0);
        assert!(b.link.previous.is_none());
        assert!(matches!(
            b.deliver(&late[1], T0),
            Err(LinkError::Envelope(_))
        ));
    }

    #[test]
    fn an_init_that_lost_the_tie_break_is_refused_when_replayed_later() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        let (a_init, b_init) = (to_b[0].clone(), to_a[0].clone());
        settle(&mut a, &mut b, to_b, to_a, T0);
        assert_synced(&mut a, &mut b, T0);
        // The winner never answered the loser's init, yet stored its stamp
        // with its own handshake's update.
        let a_wins = handshake::initiator_wins(&a.kp.device_id(), &b.kp.device_id());
        let (w, l, lost) = if a_wins {
            (&mut a, &mut b, b_init)
        } else {
            (&mut b, &mut a, a_init)
        };
        assert_eq!(w.mark, handshake::init_stamp(&lost[1..]).unwrap());
        let session = w.link.session.as_ref().unwrap().to_bytes();
        let refusal = w.deliver(&lost, T0).unwrap();
        assert!(matches!(
            DevicePacket::decode(&refusal[0]),
            Ok(DevicePacket::InitRefused(_))
        ));
        assert_eq!(w.link.session.as_ref().unwrap().to_bytes(), session);
        assert_synced(w, l, T0);
    }

    #[test]
    fn a_hostile_refusal_leaves_the_handshake_pending_and_the_real_answer_completes_it() {
        let (mut a, mut b) = pair();
        b.link.online = true;
        let init = a.online(T0);
        let body = &init[0][1..];
        // A refusal with the highest mark (only B could make it): no stamp
        // is above it, so A does not start over in a loop.
        let max = handshake::refuse(&b.kp, &a.kp.public(), body, u64::MAX).unwrap();
        let err = a.deliver(&DevicePacket::InitRefused(max).encode(), T0);
        assert!(matches!(err, Err(LinkError::Handshake(_))), "{err:?}");
        // Junk, and a refusal by someone else: refused.
        let stranger = DeviceKeypair::generate();
        let forged = handshake::refuse(&stranger, &a.kp.public(), body, 5).unwrap();
        for junk in [vec![], vec![1; 10], forged] {
            assert!(a
                .deliver(&DevicePacket::InitRefused(junk).encode(), T0)
                .is_err());
        }
        // The init is still in flight: B's answer completes it.
        let response = b.deliver(&init[0], T0).unwrap();
        let hello = a.deliver(&response[0], T0).unwrap();
        settle(&mut a, &mut b, hello, vec![], T0);
        assert_synced(&mut a, &mut b, T0);
    }

    #[test]
    fn an_init_older_than_the_mark_is_refused_and_its_initiator_starts_over_above_it() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        assert_synced(&mut a, &mut b, T0);
        assert!(b.mark >= WALL || a.mark >= WALL, "one side answered");
        // The responder is whichever lost the tie-break; call it r, and
        // the initiator i. i restarts with no session and a clock that went
        // back ten minutes (its disk and its clock both behind).
        let (i, r) = if b.mark >= WALL {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let i_kp = DeviceKeypair::from_secret_bytes(*i.kp.secret_bytes());
        i.link = PeerLink::new(i_kp.device_id(), r.kp.public(), None, 0, WALL - 600_000);
        r.link.offline();
        let init = i.online(T0);
        r.link.online = true;
        let session = r.link.session.as_ref().unwrap().to_bytes();
        let refusal = r.deliver(&init[0], T0).unwrap();
        assert_eq!(r.link.session.as_ref().unwrap().to_bytes(), session);
        // The refusal makes i start over above r's mark; r answers that.
        let init = i.deliver(&refusal[0], T0).unwrap();
        assert!(handshake::init_stamp(&init[0][1..]).unwrap() > r.mark);
        let response = r.deliver(&init[0], T0).unwrap();
        let hello = i.deliver(&response[0], T0).unwrap();
        settle(i, r, hello, vec![], T0);
        assert_synced(i, r, T0);
    }

    #[test]
    fn hostile_packets_are_refused_without_changing_anything() {
        let (mut a, mut b) = pair();
        let (to_b, to_a) = (a.online(T0), b.online(T0));
        settle(&mut a, &mut b, to_b, to_a, T0);
        let session = b.link.session.as_ref().unwrap().to_bytes();
        for junk in [
            &[][..],
            &[9, 1, 2][..],
            &[3, 0, 0, 0][..],
            &[2, 1][..],
            &[1; 40][..],
        ] {
            assert!(b.deliver(junk, T0).is_err(), "{junk:?}");
            assert_eq!(
                b.link.session.as_ref().unwrap().to_bytes(),
                session,
                "{junk:?}"
            );
        }
        assert_synced(&mut a, &mut b, T0);
    }
}
