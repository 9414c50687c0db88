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

use std::collections::{BTreeMap, HashMap};

use automerge::sync::{Message, State, SyncDoc};
use automerge::PatchLog;

use super::peers;
use crate::doc::{catalog_entry, is_internal, DocId, CATALOG_DELETED};
use crate::error::{Error, Result};
use crate::kv::{bucket_of_shard, stage_reindex};
use crate::store::{Event, Origin, Staged, Store};
use masq_core::crypto::DeviceId;
use masq_core::wire::device::{DocMessage, SyncPayload};

/// Largest encoded batch payload: batches are packed under it; a single bigger
/// sync message is split into fragments by the engine. Well under the relay's frame limit.
pub const MAX_BATCH_BYTES: usize = 192 * 1024;

/// A sync message carrying at least this many changes sends them as one
/// Automerge bundle instead (see [`bundle_changes`]).
pub const BUNDLE_MIN_CHANGES: usize = 4;

type StateKey = (DeviceId, String, DocId);

/// Replaces the change chunks of `msg` by one Automerge bundle of the same
/// changes, when there are at least [`BUNDLE_MIN_CHANGES`] and the bundle is
/// smaller.
///
/// Automerge's sync protocol sends each change as its own chunk (about 100
/// bytes for a one-key edit, most of it actor id, dependency hash and
/// checksum); a bundle encodes a run of changes with the columnar compression
/// of `save()` (1 000 one-key edits: 101 KB as chunks, 2 KB as a bundle). The
/// receiver needs nothing new: Automerge hands a message's chunks to
/// `load_incremental`, which reads bundles too, and recomputes every change's
/// hash from it. Automerge marks the bundle format experimental, so it is used
/// only on the wire, never stored, and both ends run the automerge version
/// pinned in Cargo.lock (the sync payload version is checked strictly).
/// If anything goes wrong the message keeps its chunks.
fn bundle_changes(doc: &automerge::Automerge, msg: &mut Message) {
    // A v1 message has one chunk per change; a v2 message one chunk holding
    // the change chunks back to back (or a whole document, left alone).
    let mut hashes = Vec::new();
    let mut raw_len = 0usize;
    for data in msg.changes.iter() {
        raw_len += data.len();
        let Some(chunks) = split_change_chunks(data) else {
            return;
        };
        for chunk in chunks {
            match automerge::Change::try_from(chunk) {
                Ok(c) => hashes.push(c.hash()),
                Err(_) => return,
            }
        }
    }
    if hashes.len() < BUNDLE_MIN_CHANGES {
        return;
    }
    if let Ok(bundle) = doc.bundle(hashes) {
        if bundle.bytes().len() < raw_len {
            msg.changes = vec![bundle.bytes().to_vec()].into();
        }
    }
}

/// Splits back-to-back Automerge change chunks (each: 4-byte magic, 4-byte
/// checksum, type byte, LEB128 body length, body). `None` if any chunk is not
/// an uncompressed change (type 1), e.g. a whole document.
fn split_change_chunks(mut data: &[u8]) -> Option<Vec<&[u8]>> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    const CHANGE: u8 = 1;
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.get(..4)? != MAGIC || *data.get(8)? != CHANGE {
            return None;
        }
        let (mut len, mut shift, mut pos) = (0usize, 0u32, 9usize);
        loop {
            let b = *data.get(pos)?;
            pos += 1;
            len |= usize::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 56 {
                return None;
            }
        }
        let end = pos.checked_add(len)?;
        out.push(data.get(..end)?);
        data = &data[end..];
    }
    Some(out)
}

/// Sync states and the logic around them.
pub struct SyncCore {
    /// The local store.
    store: Store,
    /// In-memory Automerge sync state per (peer, app, doc).
    states: HashMap<StateKey, State>,
    /// Messages received per state so far (progress, for the resync tick).
    received: HashMap<StateKey, u64>,
    /// States that were waiting for a reply ("in flight") at the last resync
    /// tick, with their `received` count then: still waiting at the next tick
    /// with nothing received in between means a frame was lost.
    in_flight_at_last_tick: HashMap<StateKey, u64>,
}

/// What one received batch did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Documents the batch touched (replies are generated for these).
    pub docs: Vec<(String, DocId)>,
    /// Sync messages that failed to decode or apply (kept out of the batch, reported).
    pub rejected: usize,
}

impl SyncCore {
    /// A core over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            states: HashMap::new(),
            received: HashMap::new(),
            in_flight_at_last_tick: HashMap::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn state_mut(&mut self, peer: &DeviceId, app: &str, doc: &DocId) -> Result<&mut State> {
        let key = (*peer, app.to_string(), doc.clone());
        if !self.states.contains_key(&key) {
            let st = match peers::sync_state(self.store.db(), peer, app, doc.as_str())? {
                Some(b) => State::decode(&b).unwrap_or_else(|_| State::new()),
                None => State::new(),
            };
            self.states.insert(key.clone(), st);
        }
        self.states
            .get_mut(&key)
            .ok_or_else(|| Error::Storage("sync state vanished".into()))
    }

    /// Forgets in-memory states of a peer (on disconnect): the next connect
    /// starts from the persisted shared heads.
    pub fn reset_peer(&mut self, peer: &DeviceId) {
        self.states.retain(|(p, _, _), _| p != peer);
        self.received.retain(|(p, _, _), _| p != peer);
        self.in_flight_at_last_tick.retain(|(p, _, _), _| p != peer);
    }

    /// The periodic resync with a connected peer: every document is offered
    /// again, and only the states that have waited for a reply since the
    /// previous tick (a lost frame) restart from the persisted shared heads.
    ///
    /// Resetting every state on every tick (as a reconnect does) made each
    /// tick re-exchange everything in flight: in the peers bench (2 × 100
    /// edits/s on one document) one tick cost about 25 CPU-seconds and
    /// pushed the p99 write-to-visible latency from 19 ms to seconds.
    pub fn on_resync_tick(&mut self, peer: &DeviceId) -> Result<Vec<SyncPayload>> {
        let waiting: Vec<(StateKey, u64)> = self
            .states
            .iter()
            .filter(|((p, _, _), st)| p == peer && st.in_flight)
            .map(|(k, _)| (k.clone(), self.received.get(k).copied().unwrap_or(0)))
            .collect();
        let (previous, others): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut self.in_flight_at_last_tick)
                .into_iter()
                .partition(|((p, _, _), _)| p == peer);
        self.in_flight_at_last_tick = others;
        for (k, received) in waiting {
            if previous.get(&k) == Some(&received) {
                // In flight at both ticks, nothing received in between: lost.
                self.states.remove(&k);
            } else {
                self.in_flight_at_last_tick.insert(k, received);
            }
        }
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
        let mut out = Vec::new();
        let mut cur: Vec<DocMessage> = Vec::new();
        let mut size = 0usize;
        for (app, doc) in docs {
            if let Some(msg) = self.generate(peer, app, doc)? {
                let m = DocMessage {
                    app: app.clone(),
                    doc: doc.to_string(),
                    msg,
                };
                let s = SyncPayload::item_size(&m);
                if !cur.is_empty() && size + s > MAX_BATCH_BYTES {
                    out.push(SyncPayload::Batch(std::mem::take(&mut cur)));
                    size = 0;
                }
                size += s;
                cur.push(m);
            }
        }
        if !cur.is_empty() {
            out.push(SyncPayload::Batch(cur));
        }
        Ok(out)
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
        // Decode and validate first; group by (app, catalog first, id) — the lock order.
        let mut sorted: BTreeMap<(String, bool, DocId), Message> = BTreeMap::new();
        for it in items {
            let (Ok(()), Ok(doc)) = (
                crate::store::validate_name("app", &it.app),
                DocId::parse_any(&it.doc),
            ) else {
                applied.rejected += 1;
                continue;
            };
            match Message::decode(&it.msg) {
                Ok(m) => {
                    sorted.insert((it.app, !crate::doc::is_catalog(&doc), doc), m);
                }
                Err(_) => applied.rejected += 1,
            }
        }
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
        let handles: Vec<_> = sorted
            .keys()
            .map(|(app, _, doc)| {
                store
                    .doc_handle(app, doc)
                    .map(|h| (app.clone(), doc.clone(), h))
            })
            .collect::<Result<_>>()?;
        let mut staged: Vec<Staged<'_>> = Vec::new();
        let mut batch = db.batch();
        let mut kv_events: Vec<(String, Event)> = Vec::new();
        let mut deleted: Vec<(String, DocId)> = Vec::new();
        let mut tombstones: HashMap<String, Vec<String>> = HashMap::new();
        let origin = Origin::Remote(peer.to_string());
        for ((app, doc, h), msg) in handles.iter().zip(sorted.into_values()) {
            let mut g = h
                .lock()
                .map_err(|_| Error::Storage("lock poisoned".into()))?;
            if tombstones
                .get(app)
                .map(|t| t.iter().any(|d| d == doc.as_str()))
                .unwrap_or(false)
            {
                continue; // deleted: ignore late changes
            }
            let before = g.doc.get_heads();
            // This device's pending writes to a KV shard become a change
            // before the remote ones apply (see `kv::pending`).
            if !g.kv_pending.is_empty() {
                crate::kv::pending::fold_into(db, &mut batch, app, doc, &mut g, [])?;
            }
            let st = {
                let key = (*peer, app.clone(), doc.clone());
                if !self.states.contains_key(&key) {
                    let st = match peers::sync_state(db, peer, app, doc.as_str())? {
                        Some(b) => State::decode(&b).unwrap_or_else(|_| State::new()),
                        None => State::new(),
                    };
                    self.states.insert(key.clone(), st);
                }
                self.states
                    .get_mut(&key)
                    .ok_or_else(|| Error::Storage("sync state vanished".into()))?
            };
            *self
                .received
                .entry((*peer, app.clone(), doc.clone()))
                .or_insert(0) += 1;
            // Patches are logged while the changes apply (cost proportional to
            // the changes) when someone needs them: catalog and KV shard
            // reindexing, and the app's subscribers. Diffing afterwards walks
            // the whole document, which made each change of a large document
            // slow to become visible.
            let wanted = crate::doc::is_catalog(doc)
                || bucket_of_shard(doc).is_some()
                || (!is_internal(doc) && store.has_listeners(app));
            let mut log = if wanted {
                PatchLog::active()
            } else {
                PatchLog::inactive()
            };
            if g.doc
                .receive_sync_message_log_patches(st, msg, &mut log)
                .is_err()
            {
                applied.rejected += 1;
                continue;
            }
            let patches = wanted.then(|| g.doc.make_patches(&mut log));
            peers::stage_sync_state(db, &mut batch, peer, app, doc.as_str(), &st.encode());
            let after = g.doc.get_heads();
            if after != before {
                if crate::doc::is_catalog(doc) {
                    let ts: Vec<String> = changed_keys(patches.as_deref().unwrap_or_default())
                        .into_iter()
                        .filter(|k| catalog_entry(&g.doc, k).as_deref() == Some(CATALOG_DELETED))
                        .collect();
                    tombstones.entry(app.clone()).or_default().extend(ts);
                } else if let Some(bucket) = bucket_of_shard(doc) {
                    let keys = changed_keys(patches.as_deref().unwrap_or_default());
                    for (key, value) in stage_reindex(
                        db,
                        &mut batch,
                        app,
                        bucket,
                        &g.doc,
                        keys.iter().map(String::as_str),
                    )? {
                        kv_events.push((
                            app.clone(),
                            Event::Kv {
                                bucket: bucket.to_string(),
                                key,
                                value,
                                origin: origin.clone(),
                            },
                        ));
                    }
                }
            }
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
        for (app, doc) in deleted {
            store.forget(&app, &doc);
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

/// Root-map keys that `patches` touch.
fn changed_keys(patches: &[automerge::Patch]) -> Vec<String> {
    use automerge::{PatchAction, Prop};
    let mut keys: Vec<String> = Vec::new();
    for p in patches.iter().cloned() {
        if p.obj != automerge::ROOT {
            if let Some((_, Prop::Map(k))) = p.path.first() {
                keys.push(k.clone());
            }
            continue;
        }
        match p.action {
            PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => keys.push(key),
            PatchAction::Conflict {
                prop: Prop::Map(key),
            }
            | PatchAction::Increment {
                prop: Prop::Map(key),
                ..
            } => keys.push(key),
            _ => {}
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

impl SyncCore {
    /// Documents whose current heads `peer` has not acknowledged (per the
    /// persisted sync states), as (app, doc).
    pub fn unacknowledged(&self, peer: &DeviceId) -> Result<Vec<(String, DocId)>> {
        let mut out = Vec::new();
        for (app, doc) in self.all_docs()? {
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

#[cfg(test)]
mod bundle_tests {
    use super::split_change_chunks;
    use automerge::transaction::Transactable;

    #[test]
    fn splits_back_to_back_changes_and_refuses_anything_else() {
        let mut doc = automerge::Automerge::new();
        for i in 0..3i64 {
            doc.transact(|tx| tx.put(automerge::ROOT, "k", i)).unwrap();
        }
        let all = doc.save_after(&[]);
        let chunks = split_change_chunks(&all).unwrap();
        assert_eq!(chunks.len(), 3);
        for c in &chunks {
            automerge::Change::try_from(*c).unwrap();
        }
        // Truncated, garbage, and a whole document: refused, no panic.
        assert!(split_change_chunks(&all[..all.len() - 1]).is_none());
        assert!(split_change_chunks(&[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0xff]).is_none());
        assert!(split_change_chunks(b"garbage").is_none());
        assert!(split_change_chunks(&doc.save()).is_none());
        assert_eq!(split_change_chunks(&[]).unwrap().len(), 0);
    }
}
