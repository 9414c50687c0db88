//! The Automerge side of a device: the sync state per (peer, app,
//! document) and the gate, over a [`DeviceHost`]'s documents. What a
//! [`Device`](super::Device) offers and applies goes through here, and so
//! does masq-store's plaintext `SyncCore` (tests and benchmarks that sync
//! stores without links).

use crate::crypto::DeviceId;
use crate::doc::DocId;
use crate::records::WriteSet;
use crate::sync::batching::pack_batches;
use crate::sync::doc_states::DocStates;
use crate::sync::prefs::{LocalPrefs, SyncGate};
use crate::wire::device::{DocMessage, PeerPrefs, SyncPayload};

use super::host::{self, Applied, DeviceHost};

/// Changes the peer says it needs are sent again, even if this state
/// sent them before: the message that carried them was lost.
///
/// Automerge's sync state never sends a change twice (`sent_hashes`), even
/// when the peer's `need` names it, on the assumption of a reliable stream.
/// The relay may drop, so without this a lost change was never resent
/// while the state lived: the two devices answered each other's messages
/// forever (each reply a new `need`, so the resync rule for lost replies
/// never fired) and the document never converged. Found by the simulator
/// (masq-sim, seed 6: 2 devices, 10 % loss).
pub fn resend_what_they_need(st: &mut automerge::sync::State) {
    if let Some(need) = &st.their_need {
        for hash in need {
            st.sent_hashes.remove(hash);
        }
    }
}

/// What [`DocSync::generate`] made.
#[derive(Debug, Default)]
pub struct Offer {
    /// The messages, packed into batch payloads.
    pub payloads: Vec<SyncPayload>,
    /// Documents not offered because their records do not decode (their
    /// reads answer `corrupt`), as (app, doc, the error).
    pub skipped: Vec<(String, DocId, String)>,
}

/// What [`DocSync::receive`] did.
#[derive(Debug, Default)]
pub struct Receipt {
    /// What the batch did to the documents.
    pub applied: Applied,
    /// Messages the gate refused (their app does not sync with the sender
    /// here, or sync is paused): dropped before they touched anything.
    pub filtered: usize,
}

/// Sync states and the gate.
#[derive(Default)]
pub struct DocSync {
    /// Automerge's sync state per (peer, app, doc), loaded on first use.
    states: DocStates,
    /// Which app's documents may flow with which peer.
    gate: SyncGate,
}

impl DocSync {
    /// No states yet; `local`: this device's choices.
    pub fn new(local: LocalPrefs) -> Self {
        DocSync {
            states: DocStates::new(),
            gate: SyncGate::new(local),
        }
    }

    /// The gate (this device's choices, what each peer said it takes).
    pub fn gate(&self) -> &SyncGate {
        &self.gate
    }

    /// This device's choices changed.
    pub fn set_local(&mut self, local: LocalPrefs) {
        self.gate.set_local(local);
    }

    /// `peer` said what it takes; true when that is news (then the caller
    /// offers it everything again: its states restart here).
    pub fn on_remote_prefs(&mut self, peer: DeviceId, prefs: PeerPrefs) -> bool {
        let news = self.gate.on_remote(peer, prefs);
        if news {
            self.states.reset_peer(&peer);
        }
        news
    }

    /// `peer`'s states restart from the persisted shared heads (a new sync
    /// session with it, or a lost reply).
    pub fn reset_peer(&mut self, peer: &DeviceId) {
        self.states.reset_peer(peer);
    }

    /// `peer`'s session ended: its states restart, and what it takes is
    /// unknown until it says again.
    pub fn peer_offline(&mut self, peer: &DeviceId) {
        self.states.reset_peer(peer);
        self.gate.forget(peer);
    }

    /// `peer` said Hello, which opens each of its sync sessions. If its
    /// word from before is still held here, it started a new session
    /// without this side seeing it go (a reconnect the relay did not
    /// report): it forgot ours, its states restart here, and its word is
    /// awaited again. Returns whether that happened (then the caller sends
    /// it this side's prefs again).
    pub fn on_peer_hello(&mut self, peer: &DeviceId) -> bool {
        if self.gate.remote(peer).is_none() {
            return false;
        }
        self.peer_offline(peer);
        true
    }

    /// What this device tells `peer` it takes; `only`: the apps it holds
    /// at all (a page: its own), `None` for a store.
    pub fn prefs_for(&self, peer: &DeviceId, only: Option<&[String]>) -> PeerPrefs {
        self.gate.local().for_peer(peer, only)
    }

    /// The periodic resync: states that lost a frame restart
    /// ([`DocStates::on_resync_tick`]).
    pub fn on_resync_tick(&mut self, peer: &DeviceId) {
        self.states.on_resync_tick(peer);
    }

    /// Sync messages about `docs` for `peer` (those the gate lets through),
    /// packed into batches. A document whose records do not decode is
    /// skipped; the others are offered.
    pub fn generate<H: DeviceHost>(
        &mut self,
        host: &H,
        peer: &DeviceId,
        docs: &[(String, DocId)],
    ) -> Result<Offer, H::Error> {
        host.settle_local_writes()?;
        let mut messages = Vec::new();
        let mut skipped = Vec::new();
        for (app, doc) in docs {
            if !self.gate.may_send(peer, app) {
                continue;
            }
            let key = (*peer, app.clone(), doc.clone());
            let st = host::state_mut(host, &mut self.states, key)?;
            resend_what_they_need(st);
            match host.generate(app, doc, st) {
                Ok(Some(msg)) => messages.push(DocMessage {
                    app: app.clone(),
                    doc: doc.to_string(),
                    msg,
                }),
                Ok(None) => {}
                Err(e) if H::is_document_fault(&e) => {
                    skipped.push((app.clone(), doc.clone(), e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Offer {
            payloads: pack_batches(messages),
            skipped,
        })
    }

    /// A batch from `peer`: what the gate refuses is dropped, the rest is
    /// applied by the host in one commit with `extra` (the session that
    /// opened it).
    pub fn receive<H: DeviceHost>(
        &mut self,
        host: &H,
        peer: &DeviceId,
        mut items: Vec<DocMessage>,
        extra: WriteSet,
    ) -> Result<Receipt, H::Error> {
        let before = items.len();
        items.retain(|it| self.gate.may_receive(peer, &it.app));
        let filtered = before - items.len();
        let applied = host.apply_batch(peer, items, &mut self.states, extra)?;
        Ok(Receipt { applied, filtered })
    }
}

#[cfg(test)]
mod tests {
    use super::resend_what_they_need;
    use automerge::sync::{State, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    /// Runs sync between `a` and `b`, losing A's first message that carries
    /// changes; returns whether B got A's change within 20 round trips.
    /// (Without the rule the two answer each other forever: A its heads, B
    /// its need, A nothing.)
    fn sync_after_a_lost_change(resend: bool) -> bool {
        let mut a = Automerge::new();
        a.transact(|tx| tx.put(ROOT, "base", 0)).unwrap();
        let mut b = Automerge::load(&a.save()).unwrap();
        let (mut sa, mut sb) = (State::new(), State::new());
        // Both know each other first.
        for _ in 0..4 {
            if let Some(m) = a.generate_sync_message(&mut sa) {
                b.receive_sync_message(&mut sb, m).unwrap();
            }
            if let Some(m) = b.generate_sync_message(&mut sb) {
                a.receive_sync_message(&mut sa, m).unwrap();
            }
        }
        a.transact(|tx| tx.put(ROOT, "k", 1)).unwrap();
        let mut lost = false;
        for _ in 0..20 {
            if resend {
                resend_what_they_need(&mut sa);
            }
            if let Some(m) = a.generate_sync_message(&mut sa) {
                if !lost && !m.changes.is_empty() {
                    lost = true; // the relay dropped it
                } else {
                    b.receive_sync_message(&mut sb, m).unwrap();
                }
            }
            // B hears nothing of the lost message; it speaks up (as a
            // resync or its own change would make it).
            sb.have_responded = false;
            if let Some(m) = b.generate_sync_message(&mut sb) {
                a.receive_sync_message(&mut sa, m).unwrap();
            }
            if b.get_heads() == a.get_heads() {
                return true;
            }
        }
        false
    }

    #[test]
    fn a_change_whose_message_was_lost_is_sent_again_when_the_peer_needs_it() {
        assert!(sync_after_a_lost_change(true));
        // Automerge alone never sends it again: the reason for the rule.
        assert!(!sync_after_a_lost_change(false));
    }
}
