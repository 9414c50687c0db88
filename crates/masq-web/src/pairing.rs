//! Pairing from a page, sans I/O: the native pairing (`src/sync/pairing.rs`)
//! as a state machine over one relay connection the page opens for it.
//!
//! The connection shows the relay a fresh key, never the device's (the
//! relay must not learn which device pairs, and the device's own connection
//! must not be replaced), then joins the invite's rendezvous slot. The
//! exchange is the core's (`masq_core::sync::pairing::Exchange`): commit,
//! offer, reveal, then a six-digit code both users compare
//! ([`Pairing::take_code`]) and answer ([`Pairing::confirm`]). Once both
//! said yes ([`Pairing::is_ready`]) the page's store finishes
//! ([`Pairing::finish`]): the records go into the outbox (the other device,
//! for the inviter the introductions it owes its other devices, the relay's
//! URL), and the inviter's welcome waits in [`Pairing::take_frames`] until
//! they are committed. Nothing is stored unless the exchange authenticates
//! and both users say yes.

use masq_core::crypto::{DeviceId, DeviceKeypair};
use masq_core::layout::meta::{self as layout, RELAY_URL};
use masq_core::records::{Table, WriteSet};
use masq_core::sync::pairing::{Event, Exchange, Role};
use masq_core::wire::device::{PeerInfo, SyncPayload};
use masq_core::wire::invite::Invite;
use masq_core::wire::relay_frame::{codes, Frame};
use x25519_dalek::PublicKey;

use crate::peer_store::PeerStore;
use crate::relay_conn::RelayConn;
use crate::sync::peers;

/// The device on the other end of a completed pairing (the native
/// `Paired`, field for field).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Paired {
    /// Its id (hex).
    pub device_id: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its name.
    pub name: String,
    /// The six-digit code both devices show.
    pub safety_code: String,
    /// Devices learned through it (joiner side).
    pub also_learned: usize,
}

/// Why a pairing failed.
#[derive(Debug, thiserror::Error)]
pub enum PairingFailed {
    /// The relay refused or broke the rendezvous.
    #[error("relay: {0}")]
    Relay(String),
    /// The other side's message did not authenticate or was not a pairing
    /// message (a wrong or forged invite).
    #[error("{0}")]
    Exchange(String),
    /// The invite is malformed or expired.
    #[error("{0}")]
    Invite(String),
}

/// What both users agreed on, until the store finishes it.
struct Agreement {
    /// The other device.
    peer: PeerInfo,
    /// The inviter's other devices (joiner side).
    others: Vec<PeerInfo>,
    /// The code both confirmed.
    code: String,
}

/// One pairing in progress.
pub struct Pairing {
    /// The invite (made here, or opened).
    invite: Invite,
    /// The core's exchange.
    exchange: Exchange,
    /// The key this connection shows the relay (fresh, never the device's).
    conn_key: DeviceKeypair,
    /// The connection's opening.
    conn: RelayConn,
    /// The code to show, until taken (JSON: code, device_id, fingerprint, name).
    code: Option<String>,
    /// Both users said yes; the store has not finished it yet.
    agreed: Option<Agreement>,
    /// Finished (or failed): nothing more happens.
    done: bool,
    /// Frames for the relay.
    frames: Vec<Vec<u8>>,
}

impl Pairing {
    /// A new invite through `relay` (valid from `now_secs` for the core's
    /// `INVITE_TTL_SECS`), for the device `me` introducing itself as `name`.
    pub fn invite(relay: &str, now_secs: i64, me: &DeviceKeypair, name: &str) -> Self {
        let invite = Invite::new(relay, now_secs);
        Self::with(Exchange::new(Role::Inviter, &invite, me, name), invite)
    }

    /// Joins the pairing of `uri` as the device `me`, named `name`.
    pub fn join(
        uri: &str,
        now_secs: i64,
        me: &DeviceKeypair,
        name: &str,
    ) -> Result<Self, PairingFailed> {
        let invite = Invite::parse(uri.trim(), now_secs)
            .map_err(|e| PairingFailed::Invite(e.to_string()))?;
        Ok(Self::with(
            Exchange::new(Role::Joiner, &invite, me, name),
            invite,
        ))
    }

    fn with(exchange: Exchange, invite: Invite) -> Self {
        Self {
            invite,
            exchange,
            conn_key: DeviceKeypair::generate(),
            conn: RelayConn::new(),
            code: None,
            agreed: None,
            done: false,
            frames: Vec::new(),
        }
    }

    /// The invite.
    pub fn invite_ref(&self) -> &Invite {
        &self.invite
    }

    /// Whether both users said yes ([`Self::finish`] next).
    pub fn is_ready(&self) -> bool {
        self.agreed.is_some() && !self.done
    }

    /// The code to show the user, once (JSON `{"code", "device_id",
    /// "fingerprint", "name"}`); answer with [`Self::confirm`].
    pub fn take_code(&mut self) -> Option<String> {
        self.code.take()
    }

    /// Frames to send on the pairing connection.
    pub fn take_frames(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.frames)
    }

    /// Moves the exchange's sealed messages into relay frames.
    fn flush(&mut self) {
        for m in self.exchange.take_messages() {
            self.frames.push(Frame::RendezvousSend(m).encode());
        }
    }

    /// Takes what the exchange said.
    fn on_event(&mut self, event: Option<Event>) {
        match event {
            None => {}
            Some(Event::Compare { code, peer }) => {
                let id = DeviceId::from_public(&PublicKey::from(peer.public_key));
                self.code = Some(
                    serde_json::json!({
                        "code": code,
                        "device_id": id.to_string(),
                        "fingerprint": id.fingerprint(),
                        "name": peer.name,
                    })
                    .to_string(),
                );
            }
            Some(Event::Agreed { peer, others, code }) => {
                self.agreed = Some(Agreement { peer, others, code });
            }
        }
    }

    /// This device's user answered the code: `yes` when the other device
    /// shows the same. A no (or an answer out of turn) fails the pairing,
    /// and the other device is told.
    pub fn confirm(&mut self, yes: bool) -> Result<(), PairingFailed> {
        if self.done {
            return Err(PairingFailed::Exchange("the pairing is over".into()));
        }
        let r = self.exchange.confirm(yes);
        self.flush();
        match r {
            Ok(ev) => {
                self.on_event(ev);
                Ok(())
            }
            Err(e) => {
                self.done = true;
                Err(PairingFailed::Exchange(e.to_string()))
            }
        }
    }

    /// Gives up (the invite expired, the page closed): the other device is
    /// told if it can still hear.
    pub fn abandon(&mut self) {
        self.exchange.abandon();
        self.flush();
        self.done = true;
    }

    /// One frame from the relay on the pairing connection.
    pub fn on_frame(&mut self, bytes: &[u8]) -> Result<(), PairingFailed> {
        if self.done {
            return Ok(());
        }
        let frame = Frame::decode(bytes).map_err(|e| PairingFailed::Relay(e.to_string()))?;
        if !self.conn.is_ready() {
            let out = self
                .conn
                .on_frame(&self.conn_key, &frame)
                .map_err(|e| PairingFailed::Relay(e.to_string()))?;
            if let Some(f) = out {
                self.frames.push(f.encode());
            }
            if self.conn.is_ready() {
                let join = self
                    .conn
                    .rendezvous_join(&self.invite.slot_secret())
                    .map_err(|e| PairingFailed::Relay(e.to_string()))?;
                self.frames.push(join.encode());
            }
            return Ok(());
        }
        match frame {
            Frame::RendezvousPeer { joined: true } => {
                // The joiner speaks (commits) only once the inviter is in
                // the slot: a message sent into a slot it has not entered
                // yet would be lost.
                self.exchange.on_peer_present();
                self.flush();
            }
            Frame::RendezvousPeer { joined: false } if self.exchange.is_under_way() => {
                self.done = true;
                return Err(PairingFailed::Exchange(
                    "the other device left the pairing".into(),
                ));
            }
            Frame::RendezvousData(data) => {
                let r = self.exchange.on_message(&data);
                self.flush();
                match r {
                    Ok(ev) => self.on_event(ev),
                    Err(e) => {
                        self.done = true;
                        return Err(PairingFailed::Exchange(e.to_string()));
                    }
                }
            }
            Frame::Error { code, message } if code == codes::RENDEZVOUS_AUTH_FAILED => {
                return Err(PairingFailed::Relay(message));
            }
            Frame::Error { code, message } => {
                return Err(PairingFailed::Relay(format!("{code}: {message}")));
            }
            _ => {}
        }
        Ok(())
    }

    /// Completes the pairing in `store` (whose device key is `me`): the
    /// records go to the outbox, and the inviter's welcome waits in
    /// [`Self::take_frames`] for their commit.
    pub fn finish(
        &mut self,
        store: &PeerStore,
        me: &DeviceKeypair,
    ) -> Result<Paired, PairingFailed> {
        let Some(agreed) = self.agreed.take().filter(|_| !self.done) else {
            return Err(PairingFailed::Exchange(
                "both users have not said yes yet".into(),
            ));
        };
        self.done = true;
        let now = store.now_secs();
        let mut w = WriteSet::new();
        let other = agreed.peer;
        let other_public = PublicKey::from(other.public_key);
        let other_id = DeviceId::from_public(&other_public);
        let me_id = me.device_id();
        let stage = |w: &mut WriteSet, p: &PeerInfo, added_by: &DeviceId| {
            layout::stage_peer(w, &PublicKey::from(p.public_key), &p.name, now, added_by)
                .map(|_| ())
                .map_err(|e| PairingFailed::Exchange(e.to_string()))
        };
        let mut learned = 0usize;
        stage(&mut w, &other, &me_id)?;
        match self.exchange.role() {
            Role::Inviter => {
                let existing = peers(store);
                let mut others = Vec::new();
                for (id, rec) in &existing {
                    if *id == other_id {
                        continue;
                    }
                    if let Ok(public) = rec.public() {
                        others.push(PeerInfo {
                            public_key: *public.as_bytes(),
                            name: rec.name.clone(),
                        });
                    }
                }
                // Every other device learns of the joiner over its own
                // session, when next online.
                let intro = SyncPayload::Introduce(vec![other.clone()]).encode();
                for (id, _) in &existing {
                    if *id != other_id {
                        layout::stage_note(&mut w, id, &intro);
                    }
                }
                self.exchange.welcome(others);
                self.flush();
            }
            Role::Joiner => {
                // The devices the inviter vouches for are brought in by it
                // (those removed here once stay removed). Counted, not
                // derived from the list's length: a hostile inviter's list
                // may name itself or this device.
                for p in &agreed.others {
                    let public = PublicKey::from(p.public_key);
                    if masq_core::crypto::check_public_key(&public).is_err() {
                        continue;
                    }
                    let id = DeviceId::from_public(&public);
                    if id == me_id
                        || id == other_id
                        || store.meta(&layout::removed_key(&id)).is_some()
                    {
                        continue;
                    }
                    stage(&mut w, p, &other_id)?;
                    learned += 1;
                }
            }
        }
        w.put(
            Table::Meta,
            RELAY_URL.to_vec(),
            self.invite.relay.as_bytes().to_vec(),
        );
        store.put_records(w);
        Ok(Paired {
            device_id: other_id.to_string(),
            fingerprint: other_id.fingerprint(),
            name: other.name,
            safety_code: agreed.code,
            also_learned: learned,
        })
    }
}
