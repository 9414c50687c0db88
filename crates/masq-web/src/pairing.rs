//! Pairing from a page, sans I/O: the native pairing (`src/sync/pairing.rs`)
//! as a state machine over one relay connection the page opens for it.
//!
//! The connection shows the relay a fresh key, never the device's (the
//! relay must not learn which device pairs, and the device's own connection
//! must not be replaced), then joins the invite's rendezvous slot. The two
//! devices exchange, sealed with the invite's one-time secret
//! ([`PairingChannel`]):
//! 1. joiner → inviter: `Introduce([joiner])`, once the relay says the
//!    inviter is in the slot;
//! 2. inviter → joiner: `Introduce([inviter, ...its paired devices])`.
//!
//! When the other side's message is in ([`Pairing::is_ready`]), the page's
//! store finishes ([`Pairing::finish`]): the records go into the outbox
//! (the other device, for the inviter the introductions it owes its other
//! devices, the relay's URL), and the inviter's answer waits in
//! [`Pairing::take_frames`] until they are committed. Nothing is stored
//! unless the exchange authenticates.

use masq_core::crypto::pairing::{PairingChannel, TO_INVITER, TO_JOINER};
use masq_core::crypto::{check_public_key, safety_code, DeviceId, DeviceKeypair};
use masq_core::layout::meta::{self as layout, RELAY_URL};
use masq_core::records::{Table, WriteSet};
use masq_core::wire::device::{PeerInfo, SyncPayload};
use masq_core::wire::invite::Invite;
use masq_core::wire::relay_frame::{codes, Frame};
use x25519_dalek::PublicKey;

use crate::peer_store::PeerStore;
use crate::relay_conn::RelayConn;
use crate::sync::{device_name, peers};

/// Which end of the invite this page is.
enum Role {
    /// Made the invite; waits for the joiner's hello.
    Inviter,
    /// Opened someone's invite; `me` is its hello.
    Joiner {
        /// This device, as introduced to the inviter.
        me: PeerInfo,
        /// Whether the hello went out.
        said_hello: bool,
    },
}

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

/// One pairing in progress.
pub struct Pairing {
    /// The invite (made here, or opened).
    invite: Invite,
    /// The channel sealed with the invite's secret.
    channel: PairingChannel,
    /// Inviter or joiner.
    role: Role,
    /// The key this connection shows the relay (fresh, never the device's).
    conn_key: DeviceKeypair,
    /// The connection's opening.
    conn: RelayConn,
    /// The other side's opened message, once in.
    received: Option<Vec<PeerInfo>>,
    /// Finished (or failed): nothing more happens.
    done: bool,
    /// Frames for the relay.
    frames: Vec<Vec<u8>>,
}

impl Pairing {
    /// A new invite through `relay` (valid from `now_secs` for the core's
    /// `INVITE_TTL_SECS`).
    pub fn invite(relay: &str, now_secs: i64) -> Self {
        Self::with(Invite::new(relay, now_secs), Role::Inviter)
    }

    /// Joins the pairing of `uri` as the device `me`.
    pub fn join(uri: &str, now_secs: i64, me: PeerInfo) -> Result<Self, PairingFailed> {
        let invite = Invite::parse(uri.trim(), now_secs)
            .map_err(|e| PairingFailed::Invite(e.to_string()))?;
        Ok(Self::with(
            invite,
            Role::Joiner {
                me,
                said_hello: false,
            },
        ))
    }

    fn with(invite: Invite, role: Role) -> Self {
        Self {
            channel: PairingChannel::new(&invite.secret, invite.slot),
            invite,
            role,
            conn_key: DeviceKeypair::generate(),
            conn: RelayConn::new(),
            received: None,
            done: false,
            frames: Vec::new(),
        }
    }

    /// The invite.
    pub fn invite_ref(&self) -> &Invite {
        &self.invite
    }

    /// Whether the other side's message is in ([`Self::finish`] next).
    pub fn is_ready(&self) -> bool {
        self.received.is_some() && !self.done
    }

    /// Frames to send on the pairing connection.
    pub fn take_frames(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.frames)
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
                // Speak only once the inviter is in the slot: a hello sent
                // into a slot it has not entered yet would be lost.
                if let Role::Joiner { me, said_hello } = &mut self.role {
                    if !*said_hello {
                        *said_hello = true;
                        let hello = SyncPayload::Introduce(vec![me.clone()]).encode();
                        let sealed = self.channel.seal(TO_INVITER, &hello);
                        self.frames.push(Frame::RendezvousSend(sealed).encode());
                    }
                }
            }
            Frame::RendezvousData(data) => {
                let direction = match self.role {
                    Role::Inviter => TO_INVITER,
                    Role::Joiner { .. } => TO_JOINER,
                };
                let plain = self
                    .channel
                    .open(direction, &data)
                    .map_err(|e| PairingFailed::Exchange(e.to_string()))?;
                let Ok(SyncPayload::Introduce(list)) = SyncPayload::decode(&plain) else {
                    return Err(PairingFailed::Exchange(
                        "unexpected message from the other device".into(),
                    ));
                };
                if list.is_empty() {
                    return Err(PairingFailed::Exchange("an empty introduction".into()));
                }
                for p in &list {
                    check_public_key(&PublicKey::from(p.public_key))
                        .map_err(|e| PairingFailed::Exchange(e.to_string()))?;
                }
                self.received = Some(list);
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
    /// records go to the outbox, and the inviter's answer waits in
    /// [`Self::take_frames`] for their commit.
    pub fn finish(
        &mut self,
        store: &PeerStore,
        me: &DeviceKeypair,
    ) -> Result<Paired, PairingFailed> {
        let Some(list) = self.received.take().filter(|_| !self.done) else {
            return Err(PairingFailed::Exchange(
                "the other device has not spoken yet".into(),
            ));
        };
        self.done = true;
        let now = store.now_secs();
        let mut w = WriteSet::new();
        let other = list[0].clone();
        let other_public = PublicKey::from(other.public_key);
        let other_id = DeviceId::from_public(&other_public);
        if other_id == me.device_id() {
            return Err(PairingFailed::Exchange(
                "a device cannot pair with itself".into(),
            ));
        }
        let me_id = me.device_id();
        let stage = |w: &mut WriteSet, p: &PeerInfo, added_by: &DeviceId| {
            layout::stage_peer(w, &PublicKey::from(p.public_key), &p.name, now, added_by)
                .map(|_| ())
                .map_err(|e| PairingFailed::Exchange(e.to_string()))
        };
        let mut learned = 0usize;
        match self.role {
            Role::Inviter => {
                let existing = peers(store);
                let mut welcome = vec![PeerInfo {
                    public_key: *me.public().as_bytes(),
                    name: device_name(store),
                }];
                for (id, rec) in &existing {
                    if *id == other_id {
                        continue;
                    }
                    if let Ok(public) = rec.public() {
                        welcome.push(PeerInfo {
                            public_key: *public.as_bytes(),
                            name: rec.name.clone(),
                        });
                    }
                }
                stage(&mut w, &other, &me_id)?;
                // Every other device learns of the joiner over its own
                // session, when next online.
                let intro = SyncPayload::Introduce(vec![other.clone()]).encode();
                for (id, _) in &existing {
                    if *id != other_id {
                        layout::stage_note(&mut w, id, &intro);
                    }
                }
                let sealed = self
                    .channel
                    .seal(TO_JOINER, &SyncPayload::Introduce(welcome).encode());
                self.frames.push(Frame::RendezvousSend(sealed).encode());
            }
            Role::Joiner { .. } => {
                // Devices other than the inviter and this one are counted,
                // not derived from the list's length: a hostile inviter's
                // list may leave itself out or name this device.
                for p in &list {
                    let public = PublicKey::from(p.public_key);
                    if DeviceId::from_public(&public) == me.device_id() {
                        continue;
                    }
                    // The inviter is paired here; the devices it vouches
                    // for are brought in by it (those removed here once
                    // stay removed).
                    if public == other_public {
                        stage(&mut w, p, &me_id)?;
                    } else if store
                        .meta(&layout::removed_key(&DeviceId::from_public(&public)))
                        .is_none()
                    {
                        stage(&mut w, p, &other_id)?;
                        learned += 1;
                    }
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
            safety_code: safety_code(&me.public(), &other_public),
            also_learned: learned,
        })
    }
}
