//! Pairing two devices through the relay's rendezvous slot.
//!
//! The inviter makes an [`Invite`] (relay URL, slot id, one-time secret) and
//! waits in the slot; the joiner opens the invite and joins the slot. Messages
//! in the slot are sealed with the [`PairingChannel`] keyed by the secret, so
//! the relay can neither read nor forge them:
//!
//! 1. joiner → inviter: `Introduce([joiner])` (its static key and name);
//! 2. inviter → joiner: `Introduce([inviter, ...inviter's paired devices])`.
//!
//! Both store the other (the joiner also the inviter's devices) and print the
//! six-digit safety code. The inviter queues an introduction of the joiner for
//! each of its existing devices (sent over their own sessions when they are
//! next online). Sessions are then set up by the sync engine's handshake.
//! Nothing is stored unless the exchange authenticates.

use std::time::Duration;

use x25519_dalek::PublicKey;

use super::invite::{Invite, InviteError};
use super::peers;
use super::transport::{Transport, TransportEvent};
use super::wire::{PeerInfo, SyncPayload};
use crate::crypto::pairing::{PairingChannel, TO_INVITER, TO_JOINER};
use crate::crypto::{safety_code, DeviceId};
use crate::error::{Error, Result};
use crate::store::Store;

/// The device on the other end of a completed pairing.
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

fn pairing_err(e: impl std::fmt::Display) -> Error {
    Error::BadOp(format!("pairing: {e}"))
}

/// An open invite, waiting in the rendezvous slot for the joiner.
pub struct Inviter {
    store: Store,
    invite: Invite,
    transport: Transport,
}

impl Inviter {
    /// Connects to `relay_url`, opens a rendezvous slot and makes the invite.
    pub async fn start(store: Store, relay_url: &str) -> Result<Self> {
        let invite = Invite::new(relay_url, peers::now());
        let mut transport = Transport::connect(relay_url, &rendezvous_identity()).await?;
        transport.rendezvous(&invite.slot_secret()).await?;
        peers::set_relay_url(store.db(), relay_url)?;
        Ok(Self {
            store,
            invite,
            transport,
        })
    }

    /// The invite to show the other device.
    pub fn invite(&self) -> &Invite {
        &self.invite
    }

    /// Waits (until the invite expires) for the joiner and completes the pairing.
    pub async fn wait(mut self) -> Result<Paired> {
        let channel = PairingChannel::new(&self.invite.secret, self.invite.slot);
        let ttl = (self.invite.expires - peers::now()).max(1) as u64;
        let hello = tokio::time::timeout(Duration::from_secs(ttl), next_data(&mut self.transport))
            .await
            .map_err(|_| pairing_err(InviteError::Expired))??;
        let plain = channel.open(TO_INVITER, &hello).map_err(pairing_err)?;
        let Ok(SyncPayload::Introduce(list)) = SyncPayload::decode(&plain) else {
            return Err(pairing_err("unexpected message from joiner"));
        };
        let joiner = list
            .first()
            .ok_or_else(|| pairing_err("empty hello"))?
            .clone();
        let db = self.store.db();
        let kp = peers::load_or_create_identity(db)?;
        let joiner_pub = PublicKey::from(joiner.public_key);
        crate::crypto::check_public_key(&joiner_pub).map_err(pairing_err)?;
        let joiner_id = DeviceId::from_public(&joiner_pub);
        if joiner_id == kp.device_id() {
            return Err(pairing_err("a device cannot pair with itself"));
        }
        let existing = peers::peers(db)?;
        let mut welcome = vec![PeerInfo {
            public_key: *kp.public().as_bytes(),
            name: peers::device_name(db)?,
        }];
        for (id, rec) in &existing {
            if *id != joiner_id {
                welcome.push(PeerInfo {
                    public_key: *rec.public()?.as_bytes(),
                    name: rec.name.clone(),
                });
            }
        }
        // Store the joiner and queue its introduction to every existing device.
        let intro = SyncPayload::Introduce(vec![joiner.clone()]).encode();
        let mut b = db.batch();
        peers::stage_peer(db, &mut b, &joiner_pub, &joiner.name, &kp.device_id())?;
        for (id, _) in &existing {
            if *id != joiner_id {
                peers::stage_note(db, &mut b, id, &intro)?;
            }
        }
        db.commit(b)?;
        let sealed = channel.seal(TO_JOINER, &SyncPayload::Introduce(welcome).encode());
        self.transport.send_rendezvous(sealed).await?;
        // Give the relay a moment to hand the welcome on before we hang up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.transport.close().await;
        Ok(Paired {
            device_id: joiner_id.to_string(),
            fingerprint: joiner_id.fingerprint(),
            name: joiner.name,
            safety_code: safety_code(&kp.public(), &joiner_pub),
            also_learned: 0,
        })
    }
}

/// Joins the pairing described by an invite URI.
pub async fn join(store: &Store, invite_uri: &str) -> Result<Paired> {
    let invite = Invite::parse(invite_uri, peers::now()).map_err(pairing_err)?;
    let db = store.db();
    let kp = peers::load_or_create_identity(db)?;
    let channel = PairingChannel::new(&invite.secret, invite.slot);
    let mut transport = Transport::connect(&invite.relay, &rendezvous_identity()).await?;
    transport.rendezvous(&invite.slot_secret()).await?;
    // Speak only once the relay says the inviter is in the slot: in a relay
    // cluster our join can be counted before the inviter's (both are
    // asynchronous there), and a hello sent into a slot the inviter has not
    // entered yet is lost, leaving both sides waiting until the invite expires.
    let ttl = (invite.expires - peers::now()).clamp(1, 600) as u64;
    tokio::time::timeout(Duration::from_secs(ttl), wait_for_peer(&mut transport))
        .await
        .map_err(|_| pairing_err("the inviting device is not in the rendezvous"))??;
    let me = PeerInfo {
        public_key: *kp.public().as_bytes(),
        name: peers::device_name(db)?,
    };
    transport
        .send_rendezvous(channel.seal(TO_INVITER, &SyncPayload::Introduce(vec![me]).encode()))
        .await?;
    let welcome = tokio::time::timeout(Duration::from_secs(ttl), next_data(&mut transport))
        .await
        .map_err(|_| pairing_err("the inviting device did not answer in time"))??;
    transport.close().await;
    let plain = channel.open(TO_JOINER, &welcome).map_err(pairing_err)?;
    let Ok(SyncPayload::Introduce(list)) = SyncPayload::decode(&plain) else {
        return Err(pairing_err("unexpected message from inviter"));
    };
    let inviter = list
        .first()
        .ok_or_else(|| pairing_err("empty welcome"))?
        .clone();
    let inviter_pub = PublicKey::from(inviter.public_key);
    for p in &list {
        crate::crypto::check_public_key(&PublicKey::from(p.public_key)).map_err(pairing_err)?;
    }
    let mut b = db.batch();
    // Devices other than the inviter and this one. Counted, not derived
    // from the list's length: a hostile inviter's list may leave itself out
    // or name this device (`learned - 1` underflowed then).
    let mut learned = 0usize;
    // The inviter is paired here; the devices it vouches for are brought
    // in by it (those this device removed once stay removed).
    let me = kp.device_id();
    let inviter_id = DeviceId::from_public(&inviter_pub);
    for p in &list {
        let public = PublicKey::from(p.public_key);
        let id = DeviceId::from_public(&public);
        if id == me {
            continue;
        }
        if public == inviter_pub {
            peers::stage_peer(db, &mut b, &public, &p.name, &me)?;
        } else if !peers::is_removed(db, &id)? {
            peers::stage_peer(db, &mut b, &public, &p.name, &inviter_id)?;
            learned += 1;
        }
    }
    db.commit(b)?;
    peers::set_relay_url(db, &invite.relay)?;
    let id = DeviceId::from_public(&inviter_pub);
    Ok(Paired {
        device_id: id.to_string(),
        fingerprint: id.fingerprint(),
        name: inviter.name,
        safety_code: safety_code(&kp.public(), &inviter_pub),
        also_learned: learned,
    })
}

/// The key a pairing connection shows the relay: a fresh one per pairing,
/// never the device's own. The device's own key travels sealed inside the
/// pairing messages; on the relay, a pairing connection under the device key
/// would replace the running sync engine's connection (one connection per
/// device), and the relay would learn which device is pairing.
fn rendezvous_identity() -> crate::crypto::DeviceKeypair {
    crate::crypto::DeviceKeypair::generate()
}

/// Waits until the other side is in the rendezvous slot.
async fn wait_for_peer(t: &mut Transport) -> Result<()> {
    loop {
        match t.next().await {
            Some(TransportEvent::RendezvousPeer(true)) => return Ok(()),
            Some(TransportEvent::Closed(r)) | Some(TransportEvent::Error(r)) => {
                return Err(pairing_err(format!("relay: {r}")))
            }
            None => return Err(pairing_err("relay connection lost")),
            Some(_) => {}
        }
    }
}

/// The next rendezvous data message (other events are skipped).
async fn next_data(t: &mut Transport) -> Result<Vec<u8>> {
    loop {
        match t.next().await {
            Some(TransportEvent::RendezvousData(b)) => return Ok(b),
            Some(TransportEvent::Closed(r)) | Some(TransportEvent::Error(r)) => {
                return Err(pairing_err(format!("relay: {r}")))
            }
            None => return Err(pairing_err("relay connection lost")),
            Some(_) => {}
        }
    }
}

/// Removes a device: its records and session go here, and every other device
/// is told (a removal entry of the membership log, queued as notes and passed
/// on by each device that learns it), so it receives nothing more from any
/// of them.
pub fn remove_device(store: &Store, id: &DeviceId) -> Result<()> {
    let db = store.db();
    let me = peers::load_or_create_identity(db)?.device_id();
    let change = peers::group(db, me)?.remove(id, peers::now())?;
    let mut b = db.batch();
    db.stage(&mut b, change.writes)?;
    db.commit(b)
}
