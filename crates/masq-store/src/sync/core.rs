//! The store as the core's device host: [`StoreHost`] implements
//! `masq_core::device::DeviceHost` over this store's records (fjall) and its
//! locked documents, so the core's `Device` (the sync engine's logic) runs
//! over it. Its batch loop applies a peer's sync messages under the store's
//! lock order, in one fjall batch with the session that opened them.
//!
//! [`SyncCore`] is the same sync without links: the core's `DocSync`
//! (states and gate) over a `StoreHost`, payloads passed by the caller in
//! plaintext (tests, `masq bench sync`'s in-process baseline, and the
//! admin's `unacknowledged` documents).

use std::collections::HashMap;

use automerge::sync::{Message, State, SyncDoc};

use super::peers;
use crate::doc::{catalog_entry, is_internal, DocId, CATALOG_DELETED};
use crate::error::{Error, Result};
use crate::store::{Event, LockedDoc, Origin, Staged, Store};
use masq_core::crypto::DeviceId;
use masq_core::device::doc_sync::DocSync;
use masq_core::device::host::{self as device_host, Commit, DeviceHost};
use masq_core::records::{Records, Table, WriteSet};
use masq_core::sync::batching::bundle_changes;
pub use masq_core::sync::batching::{BUNDLE_MIN_CHANGES, MAX_BATCH_BYTES};
use masq_core::sync::doc_states::DocStates;
use masq_core::sync::prefs::LocalPrefs;
use masq_core::sync::receive::{apply_message, sort_batch};
use masq_core::wire::device::{DocMessage, PeerPrefs, SyncPayload};

/// The store as a device's host: its records and documents.
#[derive(Clone)]
pub struct StoreHost {
    /// The local store.
    store: Store,
}

impl StoreHost {
    /// The host of `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Records for StoreHost {
    type Error = Error;

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .store
            .db()
            .keyspace(table)
            .get(key)?
            .map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for g in self.store.db().keyspace(table).prefix(prefix) {
            let (k, v) = g.into_inner()?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

impl DeviceHost for StoreHost {
    type GroupGuard<'a> = std::sync::MutexGuard<'a, ()>;

    fn commit(&self, writes: WriteSet, why: Commit) -> Result<()> {
        let db = self.store.db();
        let mut b = db.batch();
        db.stage(&mut b, writes)?;
        match why {
            // Fsynced even under `--durability buffered`: the state that
            // sealed envelopes must survive a power cut once they leave.
            Commit::Sealed => db.commit_fsync(b),
            Commit::Received => db.commit(b),
        }
    }

    fn all_docs(&self) -> Result<Vec<(String, DocId)>> {
        let mut out = Vec::new();
        for app in self.store.apps()? {
            let mut ids = self.store.db().doc_ids(&app)?;
            ids.sort_by_key(|id| (!id.starts_with(crate::doc::CATALOG_PREFIX), id.clone()));
            for id in ids {
                out.push((app.clone(), DocId::parse_any(&id)?));
            }
        }
        Ok(out)
    }

    fn generate(&self, app: &str, doc: &DocId, state: &mut State) -> Result<Option<Vec<u8>>> {
        let h = self.store.doc_handle(app, doc)?;
        let g = h
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".into()))?;
        if !g.exists {
            return Ok(None);
        }
        Ok(g.doc.generate_sync_message(state).map(|mut m| {
            bundle_changes(&g.doc, &mut m);
            m.encode()
        }))
    }

    fn apply_batch(
        &self,
        peer: &DeviceId,
        items: Vec<DocMessage>,
        states: &mut DocStates,
        extra: WriteSet,
    ) -> Result<masq_core::device::Applied> {
        self.apply(peer, items, states, extra)
    }

    fn is_document_fault(e: &Error) -> bool {
        matches!(e, Error::Corrupt { .. })
    }

    fn lock_group(&self) -> Self::GroupGuard<'_> {
        self.store.membership_lock()
    }

    fn only_apps(&self) -> Option<Vec<String>> {
        None
    }

    fn default_name(&self) -> String {
        peers::default_device_name()
    }
}

/// Plaintext sync between stores: the core's states and gate over a
/// [`StoreHost`], payloads passed by the caller.
pub struct SyncCore {
    /// The store.
    host: StoreHost,
    /// Sync states and the gate.
    docs: DocSync,
}

/// What one received batch did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Documents the batch touched (replies are generated for these).
    pub docs: Vec<(String, DocId)>,
    /// Sync messages that failed to decode or apply (kept out of the batch, reported).
    pub rejected: usize,
    /// Sync messages dropped because their app does not sync with the
    /// sender here (or sync is paused).
    pub filtered: usize,
}

impl SyncCore {
    /// A core over `store`, with the sync choices it stored.
    pub fn new(store: Store) -> Self {
        let local = peers::local_prefs(store.db()).unwrap_or_else(|e| {
            // Unreadable choices: sync nothing rather than what the user
            // may have turned off (a pause or an app off stays respected).
            tracing::warn!("cannot read the sync preferences, sync paused: {e}");
            LocalPrefs {
                paused: true,
                ..LocalPrefs::default()
            }
        });
        Self {
            host: StoreHost::new(store),
            docs: DocSync::new(local),
        }
    }

    /// Reads this store's sync choices again.
    pub fn reload_prefs(&mut self) -> Result<()> {
        self.docs
            .set_local(peers::local_prefs(self.host.store.db())?);
        Ok(())
    }

    /// This store's sync choices.
    pub fn local_prefs(&self) -> &LocalPrefs {
        self.docs.gate().local()
    }

    /// `peer` said what it takes: when that is news, every document it may
    /// have is offered (from the persisted states).
    pub fn on_remote_prefs(
        &mut self,
        peer: &DeviceId,
        prefs: PeerPrefs,
    ) -> Result<Vec<SyncPayload>> {
        if !self.docs.on_remote_prefs(*peer, prefs) {
            return Ok(Vec::new());
        }
        self.on_peer_ready(peer)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.host.store
    }

    /// What this store tells `peer` it takes.
    pub fn prefs_for(&self, peer: &DeviceId) -> PeerPrefs {
        self.docs.prefs_for(peer, None)
    }

    /// What `peer` said it takes in its current session, if it did.
    pub fn remote_prefs(&self, peer: &DeviceId) -> Option<&PeerPrefs> {
        self.docs.gate().remote(peer)
    }

    /// `peer` said Hello (see `DocSync::on_peer_hello`): true when its
    /// word from before was dropped and it needs this side's prefs again.
    pub fn on_peer_hello(&mut self, peer: &DeviceId) -> bool {
        self.docs.on_peer_hello(peer)
    }

    /// `peer`'s session ended: its states restart from the persisted
    /// heads, and what it takes is unknown until it says again.
    pub fn peer_offline(&mut self, peer: &DeviceId) {
        self.docs.peer_offline(peer);
    }

    /// The periodic resync with a connected peer: every document is offered
    /// again, and the states that lost a frame restart from the persisted
    /// shared heads.
    pub fn on_resync_tick(&mut self, peer: &DeviceId) -> Result<Vec<SyncPayload>> {
        self.docs.on_resync_tick(peer);
        let docs = self.all_docs()?;
        self.generate_batches(peer, &docs)
    }

    /// Forgets in-memory states of a peer: the next offer starts from the
    /// persisted shared heads.
    pub fn reset_peer(&mut self, peer: &DeviceId) {
        self.docs.reset_peer(peer);
    }

    /// Every document of every app in the store, catalogs first.
    pub fn all_docs(&self) -> Result<Vec<(String, DocId)>> {
        self.host.all_docs()
    }

    /// Generates for many documents and packs the messages into batch payloads.
    pub fn generate_batches(
        &mut self,
        peer: &DeviceId,
        docs: &[(String, DocId)],
    ) -> Result<Vec<SyncPayload>> {
        Ok(self.docs.generate(&self.host, peer, docs)?.payloads)
    }

    /// A peer became reachable: start from persisted states and offer every document.
    pub fn on_peer_ready(&mut self, peer: &DeviceId) -> Result<Vec<SyncPayload>> {
        self.reset_peer(peer);
        let docs = self.all_docs()?;
        self.generate_batches(peer, &docs)
    }

    /// Applies a received batch from `peer` in one atomic write, together
    /// with whatever `stage_extra` adds, and returns the touched documents
    /// so the caller can generate replies.
    pub fn apply_batch(
        &mut self,
        peer: &DeviceId,
        items: Vec<DocMessage>,
        stage_extra: impl FnOnce(&mut WriteSet),
    ) -> Result<Applied> {
        let mut extra = WriteSet::new();
        stage_extra(&mut extra);
        let receipt = self.docs.receive(&self.host, peer, items, extra)?;
        Ok(Applied {
            docs: receipt.applied.docs,
            rejected: receipt.applied.rejected,
            filtered: receipt.filtered,
        })
    }
}

impl StoreHost {
    /// Applies a received batch from `peer` (already past the gate) in one
    /// atomic write, together with `extra` (the ratchet state that opened
    /// it), and returns the touched documents so the caller can generate
    /// replies.
    fn apply(
        &self,
        peer: &DeviceId,
        items: Vec<DocMessage>,
        states: &mut DocStates,
        extra: WriteSet,
    ) -> Result<masq_core::device::Applied> {
        let store = self.store.clone();
        let db = store.db();
        let mut applied = masq_core::device::Applied::default();
        // Decode and check first, in the lock order (the core's rules); a
        // store holds every app.
        let batch = sort_batch(items, |_| true);
        applied.other_apps = batch.refused;
        applied.rejected = batch.rejected;
        let mut sorted = batch.messages;
        // Documents this device already deleted (tombstone in its catalog) must not
        // come back through late sync messages. Checked before any document lock
        // is taken, so the catalog-before-document lock order holds.
        let mut deleted_here: std::collections::HashSet<(String, DocId)> =
            std::collections::HashSet::new();
        for (app, _, doc) in sorted.keys() {
            if is_internal(doc) {
                continue;
            }
            let h = store.doc_handle(app, &DocId::catalog_for(doc))?;
            let cat = h
                .lock()
                .map_err(|_| Error::Storage("lock poisoned".into()))?;
            if catalog_entry(&cat.doc, doc.as_str()).as_deref() == Some(CATALOG_DELETED) {
                deleted_here.insert((app.clone(), doc.clone()));
            }
        }
        sorted.retain(|(app, _, doc), _| !deleted_here.contains(&(app.clone(), doc.clone())));
        let mut messages: HashMap<(String, DocId), Message> = sorted
            .into_iter()
            .map(|((app, _, doc), m)| ((app, doc), m))
            .collect();
        let set = store.doc_set(messages.keys().cloned())?;
        let mut staged: Vec<Staged<'_>> = Vec::new();
        let mut batch = db.batch();
        let mut kv_events: Vec<(String, Event)> = Vec::new();
        let mut deleted: Vec<(String, DocId)> = Vec::new();
        let mut tombstones: HashMap<String, Vec<String>> = HashMap::new();
        // Documents that got this device's own pending KV writes folded in
        // on the way: those are local changes, owed to every peer.
        let mut folded_here: Vec<(String, DocId)> = Vec::new();
        let origin = Origin::Remote(peer.to_string());
        for locked in set.lock_each() {
            let LockedDoc {
                app,
                id: doc,
                guard: mut g,
            } = locked?;
            let app = &app.to_string();
            let Some(msg) = messages.remove(&(app.clone(), doc.clone())) else {
                continue;
            };
            if tombstones
                .get(app)
                .map(|t| t.iter().any(|d| d == doc.as_str()))
                .unwrap_or(false)
            {
                continue; // deleted: ignore late changes
            }
            if g.deleted {
                continue; // deleted here after the check above: stays deleted
            }
            let before = g.doc.get_heads();
            // This device's pending writes to a KV shard become a change
            // before the remote ones apply (see `kv::pending`).
            let folded = !g.kv_pending.is_empty();
            if folded {
                crate::kv::pending::fold_into(db, &mut batch, app, doc, &mut g, [])?;
                folded_here.push((app.clone(), doc.clone()));
            }
            let key = (*peer, app.clone(), doc.clone());
            states.note_received(key.clone());
            let st = device_host::state_mut(self, states, key)?;
            let subscribers = !is_internal(doc) && store.has_listeners(app);
            let mut writes = WriteSet::new();
            let Ok(done) = apply_message(
                &mut writes,
                peer,
                app,
                doc,
                &mut g.doc,
                st,
                msg,
                subscribers,
            )?
            else {
                applied.rejected += 1;
                if folded {
                    // The batch removes the folded pending records: it must
                    // store the change that holds them too, or those
                    // acknowledged writes would be lost.
                    staged.push(Staged {
                        app: app.clone(),
                        id: doc.clone(),
                        guard: g,
                        before,
                        patches: None,
                    });
                }
                continue;
            };
            db.stage(&mut batch, writes)?;
            tombstones
                .entry(app.clone())
                .or_default()
                .extend(done.tombstoned);
            if let Some(changes) = done.kv {
                let bucket = changes.bucket;
                for (key, value) in changes.winners {
                    kv_events.push((
                        app.clone(),
                        Event::Kv {
                            bucket: bucket.clone(),
                            key,
                            value,
                            origin: origin.clone(),
                        },
                    ));
                }
            }
            let patches = done.patches;
            applied.docs.push((app.clone(), doc.clone()));
            staged.push(Staged {
                app: app.clone(),
                id: doc.clone(),
                guard: g,
                before,
                patches,
            });
        }
        // Tombstoned documents: drop their data in the same batch.
        for (app, ids) in &tombstones {
            for id in ids {
                if let Ok(doc) = DocId::parse_any(id) {
                    if is_internal(&doc) {
                        continue;
                    }
                    staged.retain(|s| !(s.app == *app && s.id == doc));
                    if db.doc_meta(app, id)?.is_some() {
                        db.stage_remove_doc(&mut batch, app, id)?;
                        deleted.push((app.clone(), doc));
                    }
                }
            }
        }
        db.stage(&mut batch, extra)?;
        store.commit_docs(batch, staged, &origin)?;
        // The commit announced these as the peer's changes, which the engine
        // never offers back to it: without this, the sender would not get
        // this device's writes folded here until the next resync.
        for (app, doc) in folded_here {
            store.announce_change(&app, &doc, Origin::Local);
        }
        for (app, doc) in deleted {
            // The batch is committed: a failure here leaves at most a local
            // change written after the tombstone, so it is reported, not
            // turned into a failed batch.
            if let Err(e) = store.seal_deleted(&app, &doc) {
                tracing::warn!(%app, %doc, error = %e, "sealing a peer's deletion failed");
            }
            store.publish(
                &app,
                Event::DocDeleted {
                    doc,
                    origin: origin.clone(),
                },
            );
        }
        for (app, ev) in kv_events {
            store.publish(&app, ev);
        }
        Ok(applied)
    }
}

impl SyncCore {
    /// Documents whose current heads `peer` has not acknowledged (per the
    /// persisted sync states), as (app, doc); apps that do not sync with
    /// `peer` here (off, or paused) are left out: nothing of them is owed.
    pub fn unacknowledged(&self, peer: &DeviceId) -> Result<Vec<(String, DocId)>> {
        let mut out = Vec::new();
        for (app, doc) in self.all_docs()? {
            if self.docs.gate().local().paused || !self.docs.gate().local().app_on(peer, &app) {
                continue; // not owed to it while off
            }
            let heads = {
                let h = self.host.store.doc_handle(&app, &doc)?;
                let g = h
                    .lock()
                    .map_err(|_| Error::Storage("lock poisoned".into()))?;
                if !g.exists {
                    continue;
                }
                g.doc.get_heads()
            };
            let shared = match peers::sync_state(self.host.store.db(), peer, &app, doc.as_str())? {
                Some(b) => State::decode(&b)
                    .map(|s| s.shared_heads)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            if !heads.iter().all(|h| shared.contains(h)) {
                out.push((app, doc));
            }
        }
        Ok(out)
    }
}
