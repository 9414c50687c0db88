//! What a [`Device`](super::Device) needs from the shell it runs in: its
//! records ([`Records`]), an atomic commit of a [`WriteSet`], and the
//! documents it syncs (list them, generate a sync message for one, apply a
//! peer's batch in one commit). masq-store's `StoreHost` implements it over
//! fjall and the store's locked documents; masq-web's `PeerStore` over a
//! page's in-memory records and its IndexedDB outbox; the simulator over
//! in-memory records it can crash.
//!
//! The contract that makes "persist, commit, then send" hold for both
//! kinds of shell: whatever [`DeviceHost::commit`] was given is durable
//! before any [`Out`](super::Out) the device emitted after that call leaves
//! the device. A native store commits synchronously (fjall, fsynced for
//! [`Commit::Sealed`]); a page stages into its outbox and holds the
//! device's frames until the outbox is committed.

use automerge::sync::State;

use crate::crypto::DeviceId;
use crate::doc::DocId;
use crate::records::{Records, WriteSet};
use crate::sync::doc_states::{DocStates, StateKey};
use crate::wire::device::DocMessage;

use super::meta;

/// Why a write set is committed, for shells whose durability differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The ratchet state that sealed envelopes about to leave (or the
    /// device's new identity): durable even when the store runs with
    /// buffered durability, or a power cut could make the next envelope
    /// reuse a message key.
    Sealed,
    /// What a received payload did, with the session that opened it: the
    /// store's chosen durability.
    Received,
}

/// What one received batch did to the documents.
#[derive(Debug, Default)]
pub struct Applied {
    /// (app, document) its messages reached: replies are generated for these.
    pub docs: Vec<(String, DocId)>,
    /// Messages that did not decode or apply (the rest of the batch applied).
    pub rejected: usize,
    /// Messages for an app this device does not hold (a page holds one):
    /// dropped, never stored.
    pub other_apps: usize,
}

/// The shell a [`Device`](super::Device) runs in.
pub trait DeviceHost: Records<Error: std::fmt::Display> {
    /// A guard that keeps the device group's records still while the device
    /// reads, decides and commits a membership change (natively a mutex the
    /// CLI's `devices remove` and pairing take too; a page is one thread).
    type GroupGuard<'a>
    where
        Self: 'a;

    /// Commits `writes` atomically (see the module's contract).
    fn commit(&self, writes: WriteSet, why: Commit) -> Result<(), Self::Error>;

    /// Every document the device holds, each app's catalogs first (a peer
    /// learns of deletions before it is offered what was deleted).
    fn all_docs(&self) -> Result<Vec<(String, DocId)>, Self::Error>;

    /// Local writes not yet in their documents (a page's KV writes of the
    /// batch) become changes, before messages about them are generated.
    fn settle_local_writes(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The next sync message about (app, doc) under `state`, if there is
    /// anything to say (`None` too for a document not stored here).
    fn generate(
        &self,
        app: &str,
        doc: &DocId,
        state: &mut State,
    ) -> Result<Option<Vec<u8>>, Self::Error>;

    /// Applies a peer's batch (already past the sync gate) in ONE commit
    /// with `extra` (the session that opened it): all or nothing.
    fn apply_batch(
        &self,
        peer: &DeviceId,
        items: Vec<DocMessage>,
        states: &mut DocStates,
        extra: WriteSet,
    ) -> Result<Applied, Self::Error>;

    /// Whether `e` is about one document (its records do not decode) rather
    /// than the storage: that document is skipped, sync goes on.
    fn is_document_fault(e: &Self::Error) -> bool;

    /// Takes the device group's guard.
    fn lock_group(&self) -> Self::GroupGuard<'_>;

    /// The only apps this device holds, told to every peer (a page: its
    /// own app), or `None` (a store holds every app).
    fn only_apps(&self) -> Option<Vec<String>>;

    /// The name this device shows until it is given one.
    fn default_name(&self) -> String;
}

/// The sync state of `key`, loaded from its persisted shared heads on first
/// use: what both shells' batch loops and the device's offers read.
pub fn state_mut<'s, H: Records>(
    host: &H,
    states: &'s mut DocStates,
    key: StateKey,
) -> Result<&'s mut State, H::Error> {
    let persisted = if states.is_loaded(&key) {
        None
    } else {
        meta::sync_state(host, &key.0, &key.1, key.2.as_str())?
    };
    Ok(states.state_mut(key, || persisted))
}
