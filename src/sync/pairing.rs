//! Pairing two devices through the relay's rendezvous slot, with both users'
//! yes.
//!
//! The inviter makes an [`Invite`] (relay URL, slot id, one-time secret) and
//! waits in the slot; the joiner opens the invite and joins the slot. The
//! exchange itself (commit, offer, reveal, the six-digit code, confirmation,
//! welcome) is `masq_core::sync::pairing::Exchange`, sealed with the invite's
//! secret; this module moves its messages over a [`Transport`], asks the
//! user through a [`Confirm`], and stores the records once both users said
//! yes:
//! - the inviter stores the joiner and queues an introduction of it for each
//!   of its existing devices (sent over their own sessions when next online);
//! - the joiner stores the inviter and the inviter's other devices.
//!
//! Nothing is stored, and no introduction leaves, unless the exchange
//! authenticates and both users confirm the same code. Sessions are then set
//! up by the sync engine's handshake.

use std::time::Duration;

use futures::future::BoxFuture;
use masq_core::sync::pairing::{Event, Exchange, Role};
use x25519_dalek::PublicKey;

use super::invite::{Invite, InviteError};
use super::peers;
use super::transport::{Transport, TransportEvent};
use super::wire::{PeerInfo, SyncPayload};
use crate::crypto::DeviceId;
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
    /// The six-digit code both users confirmed.
    pub safety_code: String,
    /// Devices learned through it (joiner side).
    pub also_learned: usize,
}

/// What a user is asked during a pairing: whether the other device's screen
/// shows `code`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CodeCheck {
    /// The six digits both screens must show.
    pub code: String,
    /// The other device's id (hex), as it introduced itself.
    pub device_id: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its name (its own word: the code is what is checked).
    pub name: String,
}

/// How a pairing asks its user: given the code, resolves to the user's
/// answer (true: both screens show the same code).
pub type Confirm = Box<dyn FnOnce(CodeCheck) -> BoxFuture<'static, bool> + Send>;

/// A [`Confirm`] that says yes without asking: only for callers that
/// compare the two codes themselves (`masq demo`, tests, scripts with
/// `--yes`).
pub fn confirm_without_asking() -> Confirm {
    Box::new(|_| Box::pin(async { true }))
}

/// How long a pairing connection stays open after its last message (the
/// welcome, or a decline), so the relay hands it on before the close.
const LINGER: Duration = Duration::from_millis(200);

fn pairing_err(e: impl std::fmt::Display) -> Error {
    Error::BadOp(format!("pairing: {e}"))
}

/// This device's key pair and name, as a pairing introduces it.
fn me_info(store: &Store) -> Result<(crate::crypto::DeviceKeypair, String)> {
    let db = store.db();
    Ok((peers::load_or_create_identity(db)?, peers::device_name(db)?))
}

/// What both users agreed on.
struct Agreement {
    /// The other device.
    peer: PeerInfo,
    /// The inviter's other devices (joiner side).
    others: Vec<PeerInfo>,
    /// The code both confirmed.
    code: String,
}

/// Runs `exchange` over `transport` until both users agreed (or it fails,
/// or `ttl` passes). The user is asked while messages keep coming, so the
/// other side's "no" ends the wait for this user's answer.
async fn run_exchange(
    transport: &mut Transport,
    exchange: &mut Exchange,
    confirm: Confirm,
    ttl: Duration,
) -> Result<Agreement> {
    let run = async {
        let mut confirm = Some(confirm);
        let mut answer: Option<BoxFuture<'static, bool>> = None;
        loop {
            let step = tokio::select! {
                yes = async { answer.as_mut().expect("guarded").await }, if answer.is_some() => {
                    answer = None;
                    exchange.confirm(yes)
                }
                ev = transport.next() => match ev {
                    Some(TransportEvent::RendezvousPeer(true)) => {
                        exchange.on_peer_present();
                        Ok(None)
                    }
                    Some(TransportEvent::RendezvousPeer(false)) if exchange.is_under_way() => {
                        return Err(pairing_err("the other device left the pairing"));
                    }
                    Some(TransportEvent::RendezvousData(b)) => exchange.on_message(&b),
                    Some(TransportEvent::Closed(r)) | Some(TransportEvent::Error(r)) => {
                        return Err(pairing_err(format!("relay: {r}")));
                    }
                    None => return Err(pairing_err("relay connection lost")),
                    Some(_) => Ok(None),
                },
            };
            // Whatever the step, its messages go (a decline too).
            let messages = exchange.take_messages();
            let said_something = !messages.is_empty();
            for m in messages {
                transport.send_rendezvous(m).await?;
            }
            if step.is_err() && said_something {
                // A decline: give the relay a moment to hand it on before
                // the connection closes, so the other side hears "declined"
                // rather than "left".
                tokio::time::sleep(LINGER).await;
            }
            match step.map_err(pairing_err)? {
                None => {}
                Some(Event::Compare { code, peer }) => {
                    let id = DeviceId::from_public(&PublicKey::from(peer.public_key));
                    let check = CodeCheck {
                        code,
                        device_id: id.to_string(),
                        fingerprint: id.fingerprint(),
                        name: peer.name,
                    };
                    if let Some(ask) = confirm.take() {
                        answer = Some(ask(check));
                    }
                }
                Some(Event::Agreed { peer, others, code }) => {
                    return Ok(Agreement { peer, others, code })
                }
            }
        }
    };
    match tokio::time::timeout(ttl, run).await {
        Ok(r) => r,
        Err(_) => {
            exchange.abandon();
            for m in exchange.take_messages() {
                let _ = transport.send_rendezvous(m).await;
            }
            Err(pairing_err(InviteError::Expired))
        }
    }
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

    /// Waits (until the invite expires) for the joiner, asks `confirm`, and
    /// completes the pairing once both users said yes.
    pub async fn wait(mut self, confirm: Confirm) -> Result<Paired> {
        let (kp, name) = me_info(&self.store)?;
        let mut exchange = Exchange::new(Role::Inviter, &self.invite, &kp, &name);
        let ttl = Duration::from_secs((self.invite.expires - peers::now()).max(1) as u64);
        let agreed = run_exchange(&mut self.transport, &mut exchange, confirm, ttl).await?;
        let joiner = agreed.peer;
        let db = self.store.db();
        let group_lock = self.store.membership_lock();
        let joiner_pub = PublicKey::from(joiner.public_key);
        let joiner_id = DeviceId::from_public(&joiner_pub);
        let existing = peers::peers(db)?;
        let mut others = Vec::new();
        for (id, rec) in &existing {
            if *id != joiner_id {
                others.push(PeerInfo {
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
        drop(group_lock);
        exchange.welcome(others);
        for m in exchange.take_messages() {
            self.transport.send_rendezvous(m).await?;
        }
        // Give the relay a moment to hand the welcome on before we hang up.
        tokio::time::sleep(LINGER).await;
        self.transport.close().await;
        Ok(Paired {
            device_id: joiner_id.to_string(),
            fingerprint: joiner_id.fingerprint(),
            name: joiner.name,
            safety_code: agreed.code,
            also_learned: 0,
        })
    }
}

/// Joins the pairing described by an invite URI, asking `confirm` once the
/// code is known.
pub async fn join(store: &Store, invite_uri: &str, confirm: Confirm) -> Result<Paired> {
    let invite = Invite::parse(invite_uri, peers::now()).map_err(pairing_err)?;
    let db = store.db();
    let (kp, name) = me_info(store)?;
    let mut exchange = Exchange::new(Role::Joiner, &invite, &kp, &name);
    let mut transport = Transport::connect(&invite.relay, &rendezvous_identity()).await?;
    transport.rendezvous(&invite.slot_secret()).await?;
    // The joiner speaks (commits) only once the relay says the inviter is in
    // the slot: in a relay cluster our join can be counted before the
    // inviter's, and a message sent into a slot the inviter has not entered
    // yet is lost.
    let ttl = Duration::from_secs((invite.expires - peers::now()).clamp(1, 600) as u64);
    let agreed = run_exchange(&mut transport, &mut exchange, confirm, ttl).await;
    transport.close().await;
    let agreed = agreed?;
    let inviter_pub = PublicKey::from(agreed.peer.public_key);
    let inviter_id = DeviceId::from_public(&inviter_pub);
    let _group = store.membership_lock();
    let mut b = db.batch();
    // The inviter is paired here; the devices it vouches for are brought in
    // by it (those this device removed once stay removed). Counted, not
    // derived from the list's length: a hostile inviter's list may name
    // itself or this device.
    let me = kp.device_id();
    peers::stage_peer(db, &mut b, &inviter_pub, &agreed.peer.name, &me)?;
    let mut learned = 0usize;
    for p in &agreed.others {
        let public = PublicKey::from(p.public_key);
        if crate::crypto::check_public_key(&public).is_err() {
            continue;
        }
        let id = DeviceId::from_public(&public);
        if id == me || id == inviter_id || peers::is_removed(db, &id)? {
            continue;
        }
        peers::stage_peer(db, &mut b, &public, &p.name, &inviter_id)?;
        learned += 1;
    }
    db.commit(b)?;
    peers::set_relay_url(db, &invite.relay)?;
    Ok(Paired {
        device_id: inviter_id.to_string(),
        fingerprint: inviter_id.fingerprint(),
        name: agreed.peer.name,
        safety_code: agreed.code,
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

/// Removes a device (what `devices.remove` does, through the core's
/// `device::ops::remove`): its records and session go here, and every other
/// device is told. Tests remove by id through this.
#[cfg(feature = "internals")]
pub fn remove_device(store: &Store, id: &DeviceId) -> Result<()> {
    let me = peers::load_or_create_identity(store.db())?.device_id();
    let host = super::core::StoreHost::new(store.clone());
    masq_core::device::ops::remove(&host, me, &id.to_string(), peers::now())
        .map(|_| ())
        .map_err(|e| crate::error::Error::Storage(e.to_string()))
}
