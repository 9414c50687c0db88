//! The sync core, sans I/O: Automerge's sync protocol for every (peer, document)
//! pair, turning events ("peer came online", "this batch arrived", "this
//! document changed here") into payloads to send. The caller (the engine) seals
//! and transports them; this module never touches a socket.
//!
//! Per (peer, app, doc) it keeps an `automerge::sync::State`. Only its shared
//! heads are persisted (`peers::stage_sync_state`), in the same atomic batch as
//! the changes a message brought; on every (re)connect the in-memory states are
//! rebuilt from the persisted heads, so nothing stays stuck "in flight" after a
//! lost message and reconnects resume without resending history.
//!
//! Every offered and every received message passes the [`SyncGate`]
//! (`masq_core::sync::prefs`: pause, apps off per device, and what each
//! peer said it takes): nothing is offered to a peer before its prefs
//! arrived, and a message the gate refuses is dropped before it touches a
//! document or a sync state.

use std::collections::HashMap;

use automerge::sync::{Message, State, SyncDoc};

use super::peers;
use crate::doc::{catalog_entry, is_internal, DocId, CATALOG_DELETED};
use crate::error::{Error, Result};
use crate::store::{Event, LockedDoc, Origin, Staged, Store};
use masq_core::crypto::DeviceId;
use masq_core::sync::prefs::{LocalPrefs, SyncGate};
use masq_core::wire::device::{DocMessage, PeerPrefs, SyncPayload};

use masq_core::records::WriteSet;
use masq_core::sync::batching::{bundle_changes, pack_batches};
pub use masq_core::sync::batching::{BUNDLE_MIN_CHANGES, MAX_BATCH_BYTES};
use masq_core::sync::doc_states::DocStates;
use masq_core::sync::receive::{apply_message, sort_batch};

/// Sync states and the logic around them.
pub struct SyncCore {
    /// The local store.
    store: Store,
    /// In-memory Automerge sync state per (peer, app, doc), and when one
    /// restarts (the core's rules).
    states: DocStates,
    /// Which app's documents may flow with which peer.
    gate: SyncGate,
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
            store,
            states: DocStates::new(),
            gate: SyncGate::new(local),
        }
    }

    /// Reads this store's sync choices again (after the admin changed
    /// them): what flows from now on follows them.
    pub fn reload_prefs(&mut self) -> Result<()> {
        self.gate.set_local(peers::local_prefs(self.store.db())?);
        Ok(())
    }

    /// This store's sync choices.
    pub fn local_prefs(&self) -> &LocalPrefs {
        self.gate.local()
    }

    /// What this store tells `peer` it takes.
    pub fn prefs_for(&self, peer: &DeviceId) -> PeerPrefs {
        self.gate.local().for_peer(peer, None)
    }

    /// What `peer` said it takes in its current session, if it did.
    pub fn remote_prefs(&self, peer: &DeviceId) -> Option<&PeerPrefs> {
        self.gate.remote(peer)
    }

    /// `peer` said what it takes: when that is news, every document it may
    /// have is offered (from the persisted states).
    pub fn on_remote_prefs(
        &mut self,
        peer: &DeviceId,
        prefs: PeerPrefs,
    ) -> Result<Vec<SyncPayload>> {
        if !self.gate.on_remote(*peer, prefs) {
            return Ok(Vec::new());
        }
        self.on_peer_ready(peer)
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

    /// `peer`'s session ended (offline, or the relay connection closed):
    /// its states restart from the persisted heads, and what it takes is
    /// unknown until it says again.
    pub fn peer_offline(&mut self, peer: &DeviceId) {
        self.reset_peer(peer);
        self.gate.forget(peer);
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The sync state of (peer, app, doc), loaded from its persisted shared
    /// heads on first use.
    fn state_mut(&mut self, peer: &DeviceId, app: &str, doc: &DocId) -> Result<&mut State> {
        let key = (*peer, app.to_string(), doc.clone());
        let persisted = if self.states.is_loaded(&key) {
            None
        } else {
            peers::sync_state(self.store.db(), peer, app, doc.as_str())?
        };
        Ok(self.states.state_mut(key, || persisted))
    }

    /// Forgets in-memory states of a peer (on disconnect): the next connect
    /// starts from the persisted shared heads.
    pub fn reset_peer(&mut self, peer: &DeviceId) {
        self.states.reset_peer(peer);
    }

    /// The periodic resync with a connected peer: every document is offered
    /// again, and the states that lost a frame restart from the persisted
    /// shared heads ([`DocStates::on_resync_tick`]).
    pub fn on_resync_tick(&mut self, peer: &DeviceId) -> Result<Vec<SyncPayload>> {
        self.states.on_resync_tick(peer);
        let docs = self.all_docs()?;
        self.generate_batches(peer, &docs)
    }

    /// Every document of every app in the store, catalogs first.
    pub fn all_docs(&self) -> Result<Vec<(String, DocId)>> {
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

    /// The next sync message for (peer, app, doc), if there is anything to say.
    pub fn generate(&mut self, peer: &DeviceId, app: &str, doc: &DocId) -> Result<Option<Vec<u8>>> {
        let h = self.store.doc_handle(app, doc)?;
        let g = h
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".into()))?;
        if !g.exists {
            return Ok(None);
        }
        let st = self.state_mut(peer, app, doc)?;
        Ok(g.doc.generate_sync_message(st).map(|mut m| {
            bundle_changes(&g.doc, &mut m);
            m.encode()
        }))
    }

    /// Generates for many documents and packs the messages into batch payloads.
    pub fn generate_batches(
        &mut self,
        peer: &DeviceId,
        docs: &[(String, DocId)],
    ) -> Result<Vec<SyncPayload>> {
        let mut messages = Vec::new();
        for (app, doc) in docs {
            if !self.gate.may_send(peer, app) {
                continue;
            }
            if let Some(msg) = self.generate(peer, app, doc)? {
                messages.push(DocMessage {
                    app: app.clone(),
                    doc: doc.to_string(),
                    msg,
                });
            }
        }
        Ok(pack_batches(messages))
    }

    /// A peer became reachable: start from persisted states and offer every document.
    pub fn on_peer_ready(&mut self, peer: &DeviceId) -> Result<Vec<SyncPayload>> {
        self.reset_peer(peer);
        let docs = self.all_docs()?;
        self.generate_batches(peer, &docs)
    }

    /// Applies a received batch from `peer` in one atomic write, together with
    /// whatever `stage_extra` adds (the ratchet state that opened it), then
    /// returns the touched documents so the caller can generate replies.
    pub fn apply_batch(
        &mut self,
        peer: &DeviceId,
        items: Vec<DocMessage>,
        stage_extra: impl FnOnce(&mut fjall::OwnedWriteBatch),
    ) -> Result<Applied> {
        let store = self.store.clone();
        let db = store.db();
        let mut applied = Applied::default();
        // Decode and check first, in the lock order (the core's rules).
        let gate = &self.gate;
        let batch = sort_batch(items, |app| gate.may_receive(peer, app));
        applied.filtered = batch.refused;
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
            self.states.note_received((*peer, app.clone(), doc.clone()));
            let st = self.state_mut(peer, app, doc)?;
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
        stage_extra(&mut batch);
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
            if self.gate.local().paused || !self.gate.local().app_on(peer, &app) {
                continue; // not owed to it while off
            }
            let heads = {
                let h = self.store.doc_handle(&app, &doc)?;
                let g = h
                    .lock()
                    .map_err(|_| Error::Storage("lock poisoned".into()))?;
                if !g.exists {
                    continue;
                }
                g.doc.get_heads()
            };
            let shared = match peers::sync_state(self.store.db(), peer, &app, doc.as_str())? {
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
