//! A store inside a web page: the app protocol's data requests (through the
//! core's executor, [`masq_core::api::execute`]) over the page's records in
//! memory ([`Tables`]), with the same documents, catalog, KV shards and
//! index, under the same keys, as the native store (`masq-store`).
//!
//! Architecture invariant: a request changes the mirror and queues writes
//! only when it succeeds as a whole. Its writes gather in a [`Txn`]; on
//! success they are applied to the mirror and appended to the outbox, which
//! the page commits in one IndexedDB transaction before it answers
//! ([`PeerStore::take_writes`]); on failure the documents the request touched
//! are dropped from the cache (they reload from the mirror, which is
//! unchanged). The page is single-threaded, so no locks: one request runs at
//! a time, from start to end.
//!
//! Differences from the native store, each on purpose:
//! - A KV write goes into the index at once and into its shard document at
//!   the end of the batch the page commits together ([`PeerStore::take_writes`]):
//!   one change per shard per batch, as the native store's folder thread
//!   does, but with no pending records, since the index and the changes
//!   reach the disk in the same commit.
//! - The page passes the time ([`PeerStore::set_time`]): `SystemTime` aborts
//!   in wasm32.
//! - The cache of loaded documents is bounded by count
//!   ([`MAX_CACHED_DOCS`]), not bytes: every record is in memory anyway.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use automerge::transaction::CommitOptions;
use automerge::{ActorId, AutoCommit, Automerge, ChangeHash, ReadDoc};
use masq_core::api::event::{Event, Filter, Origin};
use masq_core::api::{ApiError, DataApi, ListOptions};
use masq_core::doc::catalog::{
    catalog_entry, put_catalog_entry, CATALOG_DELETED, CATALOG_DOC, CATALOG_KV,
};
use masq_core::doc::history::HistoryEntry;
use masq_core::doc::ops::{self, ChangeOp};
use masq_core::doc::stored::{decode_stored_doc, stage_doc_change};
use masq_core::doc::{is_internal, json, DocError, DocId, MAX_CHANGE_BYTES, MAX_IMPORT_BYTES};
use masq_core::kv::{
    all_values, encode_value, fold, shard_doc, shard_of, validate_key, DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
};
use masq_core::layout::doc_chunks::{self, DocMeta, StoredDoc};
use masq_core::layout::kv_index::{self, index_key};
use masq_core::names::validate_name;
use masq_core::records::{Table, WriteSet};
use serde_json::Value as Json;

use crate::tables::Tables;

mod remote;

/// Most documents kept decoded in memory; past it one is dropped (it
/// reloads from the mirror when next used).
pub const MAX_CACHED_DOCS: usize = 4096;

/// A loaded document.
struct Loaded {
    /// The Automerge document.
    doc: Automerge,
    /// Its stored metadata; `None` while nothing is stored for it.
    meta: Option<DocMeta>,
}

/// What one request wrote and announces, kept apart until it succeeds.
#[derive(Default)]
struct Txn {
    /// Its records.
    writes: WriteSet,
    /// The documents it changed in the cache (dropped if it fails).
    touched: Vec<DocId>,
    /// Its events, published once it succeeds.
    events: Vec<Event>,
    /// Documents it deleted (dropped from the cache once it succeeds).
    deleted: Vec<DocId>,
    /// The documents whose stored bytes it changed (offered to peers once
    /// it succeeds).
    changed: Vec<DocId>,
    /// The peer whose sync message it applies (`None`: a request of this
    /// page): its events' origin, and the one peer its changes are not
    /// offered back to.
    from: Option<masq_core::crypto::DeviceId>,
}

/// One app's data in a page.
pub struct PeerStore {
    /// The app (the namespace of every record key).
    app: String,
    /// This page's Automerge actor: fresh on every open, like the native
    /// store's, so a lost write can never make it reuse an (actor, seq).
    actor: ActorId,
    /// Seconds since the Unix epoch, as the page last said.
    now_secs: Cell<i64>,
    /// Whether anybody subscribed: events (and their patches) are only made
    /// then.
    listening: Cell<bool>,
    /// Most documents kept decoded ([`MAX_CACHED_DOCS`]; tests use less).
    cache_limit: usize,
    /// A write request is under way: cached documents may hold its
    /// unstaged changes, so none is evicted.
    in_write: Cell<bool>,
    /// A batch's KV writes could not be folded into their shards: its index
    /// entries must not be committed without them, so the batch fails and
    /// the page reopens the store (see [`PeerStore::take_writes`]).
    broken: RefCell<Option<ApiError>>,
    /// The page's records.
    tables: RefCell<Tables>,
    /// Loaded documents.
    docs: RefCell<HashMap<DocId, Loaded>>,
    /// Writes of successful requests not yet taken by the page.
    outbox: RefCell<WriteSet>,
    /// KV writes of the batch not yet folded into their shard documents
    /// (already in the index and the outbox): shard → key → encoded value.
    kv_pending: RefCell<BTreeMap<DocId, BTreeMap<String, Option<String>>>>,
    /// Events of successful requests not yet taken by the page.
    events: RefCell<Vec<Event>>,
    /// Documents changed since the sync engine last asked
    /// ([`PeerStore::take_changed`]), each with the one peer it came from
    /// (`None`: changed here, or by several).
    changed: RefCell<BTreeMap<DocId, Option<masq_core::crypto::DeviceId>>>,
}

impl Txn {
    /// The origin of its events.
    fn origin(&self) -> Origin {
        match &self.from {
            None => Origin::Local,
            Some(peer) => Origin::Remote(peer.to_string()),
        }
    }
}

fn api(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

/// Names the document in a depth error, as the native store does.
fn name_too_deep(e: DocError, id: &DocId) -> ApiError {
    match e {
        DocError::TooDeep { limit, .. } => DocError::TooDeep {
            what: format!("document {id}"),
            limit,
        }
        .into(),
        e => e.into(),
    }
}

impl PeerStore {
    /// A store for `app` over `tables` (every record the page holds).
    pub fn open(app: &str, tables: Tables) -> Result<Self, ApiError> {
        validate_name("app", app)?;
        Ok(Self {
            app: app.to_string(),
            actor: masq_core::doc::new_actor_id(),
            now_secs: Cell::new(0),
            listening: Cell::new(false),
            cache_limit: MAX_CACHED_DOCS,
            in_write: Cell::new(false),
            broken: RefCell::new(None),
            tables: RefCell::new(tables),
            docs: RefCell::new(HashMap::new()),
            outbox: RefCell::new(WriteSet::new()),
            kv_pending: RefCell::new(BTreeMap::new()),
            events: RefCell::new(Vec::new()),
            changed: RefCell::new(BTreeMap::new()),
        })
    }

    /// The app.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Sets the time change records carry (seconds since the Unix epoch).
    pub fn set_time(&self, secs: i64) {
        self.now_secs.set(secs);
    }

    /// Seconds since the Unix epoch, as the page last said.
    pub fn now_secs(&self) -> i64 {
        self.now_secs.get()
    }

    /// Says whether anybody listens (events are made only then).
    pub fn set_listening(&self, on: bool) {
        self.listening.set(on);
    }

    /// The writes of the requests that succeeded since the last call, for
    /// the page to commit as one transaction (KV writes folded into their
    /// shards first). An `Err` means the batch cannot be committed whole:
    /// its writes are dropped, and the page must reopen the store from what
    /// it committed before (memory is ahead of it).
    pub fn take_writes(&self) -> Result<WriteSet, ApiError> {
        let folded = self.fold_pending(None);
        let writes = std::mem::take(&mut *self.outbox.borrow_mut());
        if let Some(e) = self.broken.borrow().clone() {
            return Err(e);
        }
        folded.map(|()| writes)
    }

    /// Number of writes waiting for [`Self::take_writes`] (the page tells
    /// by it which requests wrote).
    pub fn pending_writes(&self) -> usize {
        self.outbox.borrow().len()
    }

    /// The events of the requests that succeeded since the last call.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.borrow_mut())
    }

    /// Number of records in a table (for tests and the page's statistics).
    pub fn record_count(&self, t: Table) -> usize {
        self.tables.borrow().len(t)
    }

    fn commit_options(&self, message: Option<&str>) -> CommitOptions {
        let mut o = CommitOptions::default().with_time(self.now_secs.get());
        if let Some(m) = message {
            o.set_message(m);
        }
        o
    }

    /// Runs one request's body: its writes and events take effect only if
    /// it succeeds.
    fn write<R>(&self, f: impl FnOnce(&mut Txn) -> Result<R, ApiError>) -> Result<R, ApiError> {
        let mut txn = Txn::default();
        let nested = self.in_write.replace(true);
        let result = f(&mut txn);
        self.in_write.set(nested);
        if !nested {
            Self::trim(&mut self.docs.borrow_mut(), self.cache_limit);
        }
        match result {
            Ok(r) => {
                self.tables.borrow_mut().apply(&txn.writes);
                self.outbox.borrow_mut().append(txn.writes);
                let mut docs = self.docs.borrow_mut();
                for id in &txn.deleted {
                    docs.remove(id);
                }
                let mut changed = self.changed.borrow_mut();
                for id in txn.changed {
                    changed
                        .entry(id)
                        .and_modify(|f| {
                            if *f != txn.from {
                                *f = None
                            }
                        })
                        .or_insert(txn.from);
                }
                if self.listening.get() {
                    self.events.borrow_mut().extend(txn.events);
                }
                Ok(r)
            }
            Err(e) => {
                let mut docs = self.docs.borrow_mut();
                for id in &txn.touched {
                    docs.remove(id);
                }
                Err(e)
            }
        }
    }

    /// Drops cached documents until at most `keep` remain (any: every
    /// one can be reloaded from the mirror, as no request is under way).
    fn trim(docs: &mut HashMap<DocId, Loaded>, keep: usize) {
        while docs.len() > keep {
            let Some(victim) = docs.keys().next().cloned() else {
                return;
            };
            docs.remove(&victim);
        }
    }

    /// Reads a document back from the mirror.
    fn load(&self, id: &DocId) -> Result<Loaded, ApiError> {
        let tables = self.tables.borrow();
        let key = doc_chunks::doc_key(&self.app, id.as_str());
        let Some(meta_bytes) = tables.get(Table::Docs, &key) else {
            return Ok(Loaded {
                doc: Automerge::new().with_actor(self.actor.clone()),
                meta: None,
            });
        };
        let meta = DocMeta::decode(id.as_str(), meta_bytes)?;
        let snapshot = tables
            .get(
                Table::Chunks,
                &doc_chunks::snapshot_key(&self.app, id.as_str()),
            )
            .map(<[u8]>::to_vec);
        let live = meta.live_seqs();
        let start = doc_chunks::incr_key(&self.app, id.as_str(), live.start);
        let end = doc_chunks::incr_key(&self.app, id.as_str(), live.end);
        let chunks = tables
            .range_from(Table::Chunks, &start)
            .take_while(|(k, _)| **k < end)
            .map(|(_, v)| v.clone())
            .collect();
        let mut doc = decode_stored_doc(
            id.as_str(),
            StoredDoc {
                meta: meta.clone(),
                snapshot,
                chunks,
            },
        )?;
        doc.set_actor(self.actor.clone());
        Ok(Loaded {
            doc,
            meta: Some(meta),
        })
    }

    /// Runs `f` on the loaded document `id` (loading it on a miss).
    fn with_doc<R>(
        &self,
        id: &DocId,
        f: impl FnOnce(&mut Loaded) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let mut docs = self.docs.borrow_mut();
        if !docs.contains_key(id) {
            let loaded = self.load(id)?;
            // Inside a write request a cached document may hold changes not
            // staged yet: nothing is dropped then (`write` trims after).
            if !self.in_write.get() {
                Self::trim(&mut docs, self.cache_limit.saturating_sub(1));
            }
            docs.insert(id.clone(), loaded);
        }
        let loaded = docs
            .get_mut(id)
            .ok_or_else(|| api("storage", "document cache"))?;
        f(loaded)
    }

    /// Stages what changed in `id` since `before` (and its event).
    fn stage(
        &self,
        txn: &mut Txn,
        id: &DocId,
        before: &[ChangeHash],
        patches: Option<Vec<automerge::Patch>>,
    ) -> Result<(), ApiError> {
        let listening = self.listening.get();
        let origin = txn.origin();
        self.with_doc(id, |l| {
            let Some(meta) = stage_doc_change(
                &mut txn.writes,
                &self.app,
                id,
                &l.doc,
                l.meta.as_ref(),
                before,
                true,
            )?
            else {
                return Ok(());
            };
            l.meta = Some(meta);
            txn.changed.push(id.clone());
            if listening && !is_internal(id) {
                let heads = l.doc.get_heads();
                let raw = patches.unwrap_or_else(|| l.doc.diff(before, &heads));
                txn.events.push(Event::Doc {
                    doc: id.clone(),
                    heads: heads.iter().map(|h| h.to_string()).collect(),
                    patches: raw
                        .iter()
                        .map(|p| json::patch_or_too_deep(&l.doc, p))
                        .collect(),
                    origin,
                });
            }
            Ok(())
        })
    }

    /// A user document that must exist: `unknown_doc` or `doc_deleted`
    /// otherwise, as natively.
    fn existing(&self, id: &DocId) -> Result<(), ApiError> {
        if self.with_doc(id, |l| Ok(l.meta.is_some()))? {
            return Ok(());
        }
        let state = self.with_doc(&DocId::catalog_for(id), |c| {
            Ok(catalog_entry(&c.doc, id.as_str()))
        })?;
        match state.as_deref() {
            Some(CATALOG_DELETED) => Err(api("doc_deleted", format!("document {id} was deleted"))),
            _ => Err(api("unknown_doc", format!("unknown document {id}"))),
        }
    }

    /// Lists `id` in its catalog shard as `state` (if it is not listed yet
    /// or `overwrite`), staging the catalog's change.
    fn catalog_put(
        &self,
        txn: &mut Txn,
        id: &DocId,
        state: &str,
        overwrite: bool,
    ) -> Result<(), ApiError> {
        let cat = DocId::catalog_for(id);
        txn.touched.push(cat.clone());
        let opts = self.commit_options(None);
        let before = self.with_doc(&cat, |c| {
            let before = c.doc.get_heads();
            if overwrite || catalog_entry(&c.doc, id.as_str()).is_none() {
                c.doc
                    .transact_with(|_| opts, |tx| put_catalog_entry(tx, id, state))
                    .map_err(|f| ApiError::from(f.error))?;
            }
            Ok(before)
        })?;
        self.stage(txn, &cat, &before, None)
    }

    /// Writes KV entries (`None`: delete) as one request: the index at
    /// once, the shard documents at the end of the batch ([`Self::fold_pending`]).
    fn kv_write(
        &self,
        bucket: &str,
        entries: Vec<(String, Option<&Json>)>,
    ) -> Result<(), ApiError> {
        validate_name("bucket", bucket)?;
        let mut by_shard: BTreeMap<usize, BTreeMap<String, Option<String>>> = BTreeMap::new();
        for (k, v) in entries {
            validate_key(&k)?;
            let enc = v.map(encode_value).transpose()?;
            by_shard.entry(shard_of(&k)).or_default().insert(k, enc);
        }
        let listening = self.listening.get();
        self.write(|txn| {
            for (shard, items) in &by_shard {
                // A shard that does not load (corrupt records) fails this
                // request now, as natively, not the batch's fold later.
                self.with_doc(&shard_doc(bucket, *shard), |_| Ok(()))?;
                for (k, v) in items {
                    kv_index::stage_winner(
                        &mut txn.writes,
                        &self.app,
                        bucket,
                        k,
                        v.as_deref().map(str::as_bytes),
                    );
                    if listening {
                        txn.events.push(Event::Kv {
                            bucket: bucket.to_string(),
                            key: k.clone(),
                            value: v
                                .as_deref()
                                .map(|e| serde_json::from_str(e).unwrap_or(Json::String(e.into()))),
                            origin: Origin::Local,
                        });
                    }
                }
            }
            Ok(())
        })?;
        let mut pending = self.kv_pending.borrow_mut();
        for (shard, items) in by_shard {
            pending
                .entry(shard_doc(bucket, shard))
                .or_default()
                .extend(items);
        }
        Ok(())
    }

    /// Folds the KV writes of the batch into their shard documents: one
    /// change per shard (the native store's folder does the same across
    /// its own batches), with the catalog entry of a new shard. `only`:
    /// just that shard (before it is read).
    ///
    /// Nothing of the batch is committed before this ran (the page commits
    /// what [`Self::take_writes`] returns, which calls it), so the index and
    /// the shard changes always reach the disk together. If it fails, the
    /// batch must not be committed at all (see [`Self::take_writes`]).
    fn fold_pending(&self, only: Option<&DocId>) -> Result<(), ApiError> {
        let shards: Vec<(DocId, BTreeMap<String, Option<String>>)> = {
            let mut pending = self.kv_pending.borrow_mut();
            match only {
                Some(id) => pending.remove_entry(id).into_iter().collect(),
                None => std::mem::take(&mut *pending).into_iter().collect(),
            }
        };
        for (id, items) in shards {
            let folded = self.write(|txn| {
                txn.touched.push(id.clone());
                let (before, new) = self.with_doc(&id, |l| {
                    let before = l.doc.get_heads();
                    fold(
                        &mut l.doc,
                        &[],
                        items.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
                    )?;
                    Ok((before, l.meta.is_none()))
                })?;
                if new {
                    self.catalog_put(txn, &id, CATALOG_KV, false)?;
                }
                self.stage(txn, &id, &before, None)
            });
            if let Err(e) = folded {
                // The writes' index entries are in the outbox already.
                *self.broken.borrow_mut() = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Creates a document from `build` (which fills the empty document) and
    /// lists it in the catalog.
    fn create(
        &self,
        message: Option<&str>,
        build: impl FnOnce(&mut Automerge, &dyn Fn() -> CommitOptions) -> Result<(), ApiError>,
    ) -> Result<DocId, ApiError> {
        let id = DocId::random();
        let opts = || self.commit_options(Some(message.unwrap_or("create")));
        self.write(|txn| {
            txn.touched.push(id.clone());
            self.with_doc(&id, |l| {
                build(&mut l.doc, &opts)?;
                if l.doc.get_heads().is_empty() {
                    l.doc.empty_commit(opts());
                }
                Ok(())
            })?;
            self.catalog_put(txn, &id, CATALOG_DOC, true)?;
            self.stage(txn, &id, &[], None)?;
            Ok(id.clone())
        })
    }

    /// Runs `f` on an existing document for reading.
    fn read<R>(&self, id: &DocId, f: impl FnOnce(&Automerge) -> R) -> Result<R, ApiError> {
        self.existing(id)?;
        self.with_doc(id, |l| Ok(f(&l.doc)))
    }
}

impl DataApi for PeerStore {
    type Subscription = Filter;
    type Error = ApiError;

    fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<Json>, ApiError> {
        validate_name("bucket", bucket)?;
        validate_key(key)?;
        let tables = self.tables.borrow();
        match tables.get(Table::Kv, &index_key(&self.app, bucket, key)) {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes).map_err(DocError::from)?)),
        }
    }

    fn kv_put(&self, bucket: &str, key: &str, value: &Json) -> Result<(), ApiError> {
        self.kv_write(bucket, vec![(key.to_string(), Some(value))])
    }

    fn kv_put_many(&self, bucket: &str, entries: Vec<(String, Json)>) -> Result<(), ApiError> {
        self.kv_write(
            bucket,
            entries.iter().map(|(k, v)| (k.clone(), Some(v))).collect(),
        )
    }

    fn kv_delete(&self, bucket: &str, key: &str) -> Result<bool, ApiError> {
        let existed = self.kv_get(bucket, key)?.is_some();
        if existed {
            self.kv_write(bucket, vec![(key.to_string(), None)])?;
        }
        Ok(existed)
    }

    fn kv_list(&self, bucket: &str, opts: &ListOptions) -> Result<Vec<(String, Json)>, ApiError> {
        validate_name("bucket", bucket)?;
        let limit = opts.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT);
        let base = index_key(&self.app, bucket, "");
        let (start, prefix) =
            kv_index::list_start(&self.app, bucket, &opts.prefix, opts.start_after.as_deref());
        let tables = self.tables.borrow();
        let mut out = Vec::new();
        for (k, v) in tables.range_from(Table::Kv, &start) {
            if out.len() >= limit || !k.starts_with(&prefix) {
                break;
            }
            let key = String::from_utf8_lossy(&k[base.len()..]).to_string();
            out.push((key, serde_json::from_slice(v).map_err(DocError::from)?));
        }
        Ok(out)
    }

    fn kv_conflicts(&self, bucket: &str, key: &str) -> Result<Vec<Json>, ApiError> {
        validate_name("bucket", bucket)?;
        validate_key(key)?;
        let id = shard_doc(bucket, shard_of(key));
        // The shard's writes of this batch first, so Automerge has them.
        self.fold_pending(Some(&id))?;
        self.with_doc(&id, |l| Ok(all_values(&l.doc, key)?))
    }

    fn kv_watch(&self, bucket: &str, prefix: &str) -> Result<Filter, ApiError> {
        validate_name("bucket", bucket)?;
        Ok(Filter::Kv {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    fn doc_create(&self, ops: &[ChangeOp], message: Option<&str>) -> Result<DocId, ApiError> {
        self.create(message, |doc, opts| {
            doc.transact_with(
                |_| opts(),
                |tx| -> Result<(), DocError> {
                    for op in ops {
                        ops::apply(tx, op)?;
                    }
                    Ok(())
                },
            )
            .map_err(|f| ApiError::from(f.error))?;
            Ok(())
        })
    }

    fn doc_get(&self, id: &DocId, at: Option<&[ChangeHash]>) -> Result<Json, ApiError> {
        self.read(id, |d| {
            if let Some(heads) = at {
                if heads.iter().any(|h| d.get_change_by_hash(h).is_none()) {
                    return Err(api(
                        "unknown_heads",
                        format!("unknown heads for document {id}"),
                    ));
                }
            }
            json::read_root(d, at).map_err(|e| name_too_deep(e, id))
        })?
    }

    fn doc_change(
        &self,
        id: &DocId,
        ops: &[ChangeOp],
        message: Option<&str>,
    ) -> Result<Vec<ChangeHash>, ApiError> {
        let size = serde_json::to_vec(ops).map(|v| v.len()).unwrap_or(0);
        if size > MAX_CHANGE_BYTES {
            return Err(DocError::TooLarge {
                what: "change",
                size,
                limit: MAX_CHANGE_BYTES,
            }
            .into());
        }
        self.existing(id)?;
        let opts = self.commit_options(message);
        let listening = self.listening.get() && !is_internal(id);
        self.write(|txn| {
            txn.touched.push(id.clone());
            let (before, patches) = self.with_doc(id, |l| {
                let before = l.doc.get_heads();
                let apply = |tx: &mut automerge::transaction::Transaction<'_>| {
                    for op in ops {
                        ops::apply(tx, op)?;
                    }
                    Ok::<(), DocError>(())
                };
                let patches = if listening {
                    let mut done = l
                        .doc
                        .transact_and_log_patches_with(|_| opts, apply)
                        .map_err(|f| ApiError::from(f.error))?;
                    Some(l.doc.make_patches(&mut done.patch_log))
                } else {
                    l.doc
                        .transact_with(|_| opts, apply)
                        .map_err(|f| ApiError::from(f.error))?;
                    None
                };
                Ok((before, patches))
            })?;
            self.stage(txn, id, &before, patches)?;
            self.with_doc(id, |l| Ok(l.doc.get_heads()))
        })
    }

    fn doc_heads(&self, id: &DocId) -> Result<Vec<ChangeHash>, ApiError> {
        self.read(id, |d| d.get_heads())
    }

    fn doc_history(&self, id: &DocId) -> Result<Vec<HistoryEntry>, ApiError> {
        self.read(id, masq_core::doc::history::history)
    }

    fn doc_list(&self) -> Result<Vec<DocId>, ApiError> {
        let prefix = doc_chunks::app_prefix(&self.app);
        let tables = self.tables.borrow();
        let mut out: Vec<DocId> = tables
            .prefix(Table::Docs, &prefix)
            .filter_map(|(k, _)| std::str::from_utf8(&k[prefix.len()..]).ok())
            .filter_map(|s| DocId::parse(s).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    fn doc_delete(&self, id: &DocId) -> Result<(), ApiError> {
        self.existing(id)?;
        self.write(|txn| {
            self.catalog_put(txn, id, CATALOG_DELETED, true)?;
            doc_chunks::stage_remove_doc(&mut txn.writes, &self.app, id.as_str());
            txn.deleted.push(id.clone());
            txn.events.push(Event::DocDeleted {
                doc: id.clone(),
                origin: Origin::Local,
            });
            Ok(())
        })
    }

    fn doc_export(&self, id: &DocId) -> Result<Vec<u8>, ApiError> {
        self.read(id, |d| d.save())
    }

    fn doc_import(&self, bytes: &[u8]) -> Result<DocId, ApiError> {
        if bytes.len() > MAX_IMPORT_BYTES {
            return Err(DocError::TooLarge {
                what: "automerge file",
                size: bytes.len(),
                limit: MAX_IMPORT_BYTES,
            }
            .into());
        }
        let mut incoming = AutoCommit::load(bytes).map_err(|e| {
            api(
                "bad_op",
                format!("invalid operation: not an Automerge file: {e}"),
            )
        })?;
        json::check_depth(&incoming).map_err(|e| match e {
            DocError::TooDeep { limit, .. } => DocError::TooDeep {
                what: "the imported document".into(),
                limit,
            }
            .into(),
            e => ApiError::from(e),
        })?;
        let changes: Vec<automerge::Change> = incoming.get_changes(&[]);
        self.create(None, |doc, _| {
            doc.apply_changes(changes).map_err(DocError::from)?;
            Ok(())
        })
    }

    fn doc_subscribe(&self, id: Option<DocId>) -> Result<Filter, ApiError> {
        Ok(Filter::Doc(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use masq_core::api::execute::{execute, Outcome};
    use masq_core::api::parse_request;
    use serde_json::json;

    fn run(store: &PeerStore, req: Json) -> Result<Json, ApiError> {
        let mut req = req;
        req["id"] = json!(1);
        let env = parse_request(&req.to_string()).map_err(|(_, e)| e)?;
        match execute(store, env.request)? {
            Outcome::Value(v) => Ok(v),
            Outcome::Subscribe(_) => Ok(json!("sub")),
        }
    }

    /// A store reopened from the records the first one wrote, as the page
    /// does from IndexedDB.
    fn reopen(records: &[WriteSet]) -> PeerStore {
        let mut t = Tables::new();
        for w in records {
            t.apply(w);
        }
        PeerStore::open("notes", t).unwrap()
    }

    #[test]
    fn kv_and_docs_survive_a_reopen_from_the_written_records() {
        let s = PeerStore::open("notes", Tables::new()).unwrap();
        s.set_time(1_700_000_000);
        run(&s, json!({"op": "kv.put", "key": "a", "value": {"x": 1}})).unwrap();
        run(
            &s,
            json!({"op": "kv.put_many", "bucket": "b", "entries": [["k1", 1], ["k2", 2]]}),
        )
        .unwrap();
        assert_eq!(
            run(&s, json!({"op": "kv.delete", "bucket": "b", "key": "k1"})).unwrap(),
            json!({"deleted": true})
        );
        let doc = run(
            &s,
            json!({"op": "doc.create", "ops": [{"op": "put", "path": "/t", "value": "hi"}]}),
        )
        .unwrap()["doc"]
            .as_str()
            .unwrap()
            .to_string();
        run(&s, json!({"op": "doc.change", "doc": doc, "ops": [{"op": "put", "path": "/n", "value": 2}]}))
            .unwrap();
        let gone = run(&s, json!({"op": "doc.create"})).unwrap()["doc"]
            .as_str()
            .unwrap()
            .to_string();
        run(&s, json!({"op": "doc.delete", "doc": gone})).unwrap();
        let written = vec![s.take_writes().unwrap()];

        let r = reopen(&written);
        assert_eq!(
            run(&r, json!({"op": "kv.get", "key": "a"})).unwrap(),
            json!({"x": 1})
        );
        assert_eq!(
            run(&r, json!({"op": "kv.list", "bucket": "b"})).unwrap(),
            json!([{"key": "k2", "value": 2}])
        );
        assert_eq!(
            run(&r, json!({"op": "doc.get", "doc": doc})).unwrap(),
            json!({"t": "hi", "n": 2})
        );
        assert_eq!(run(&r, json!({"op": "doc.list"})).unwrap(), json!([doc]));
        assert_eq!(
            run(&r, json!({"op": "doc.get", "doc": gone}))
                .unwrap_err()
                .code,
            "doc_deleted"
        );
        assert_eq!(
            run(&r, json!({"op": "kv.conflicts", "key": "a"})).unwrap(),
            json!([{"x": 1}])
        );
        let history = run(&r, json!({"op": "doc.history", "doc": doc})).unwrap();
        assert_eq!(history.as_array().unwrap().len(), 2);
        assert_eq!(history[0]["time"], json!(1_700_000_000));
    }

    #[test]
    fn errors_carry_the_native_codes_and_write_nothing() {
        let s = PeerStore::open("notes", Tables::new()).unwrap();
        let code = |req: Json| run(&s, req).unwrap_err().code;
        assert_eq!(code(json!({"op": "kv.get", "key": "nope"})), "not_found");
        assert_eq!(
            code(json!({"op": "kv.put", "bucket": "a b", "key": "k", "value": 1})),
            "invalid_name"
        );
        assert_eq!(code(json!({"op": "doc.get", "doc": "xyz"})), "bad_doc_id");
        assert_eq!(
            code(json!({"op": "doc.get", "doc": DocId::random().as_str()})),
            "unknown_doc"
        );
        let doc = run(&s, json!({"op": "doc.create"})).unwrap()["doc"].clone();
        let before = s.take_writes().unwrap().len();
        assert!(before > 0);
        // A change whose second op fails applies nothing, writes nothing.
        assert_eq!(
            code(json!({"op": "doc.change", "doc": doc, "ops": [
                {"op": "put", "path": "/a", "value": 1},
                {"op": "splice", "path": "/missing", "index": 0, "delete": 0, "insert": "x"}
            ]})),
            "bad_path"
        );
        assert!(s.take_writes().unwrap().is_empty());
        assert_eq!(
            run(&s, json!({"op": "doc.get", "doc": doc})).unwrap(),
            json!({})
        );
        let deep = (0..100).fold(json!(1), |v, _| json!([v]));
        assert_eq!(
            code(json!({"op": "kv.put", "key": "d", "value": deep})),
            "too_deep"
        );
        assert!(s.take_writes().unwrap().is_empty());
    }

    #[test]
    fn events_follow_successful_writes_when_someone_listens() {
        let s = PeerStore::open("notes", Tables::new()).unwrap();
        run(&s, json!({"op": "kv.put", "key": "quiet", "value": 1})).unwrap();
        assert!(s.take_events().is_empty());
        s.set_listening(true);
        run(&s, json!({"op": "kv.put", "key": "k", "value": 2})).unwrap();
        // Read before the batch is folded: the shard gets the write first.
        assert_eq!(
            run(&s, json!({"op": "kv.conflicts", "key": "k"})).unwrap(),
            json!([2])
        );
        let doc = run(
            &s,
            json!({"op": "doc.create", "ops": [{"op": "put", "path": "/a", "value": 1}]}),
        )
        .unwrap()["doc"]
            .clone();
        let events = s.take_events();
        assert!(
            matches!(&events[0], Event::Kv { key, value: Some(v), .. } if key == "k" && *v == json!(2))
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Doc { doc: d, patches, .. }
            if d.as_str() == doc.as_str().unwrap() && !patches.is_empty())));
        // Internal documents (the catalog, KV shards) make no document events.
        assert!(events
            .iter()
            .all(|e| !matches!(e, Event::Doc { doc, .. } if is_internal(doc))));
    }

    #[test]
    fn a_full_document_cache_never_drops_a_change_before_it_is_stored() {
        // With room for two documents, every create loads the new document
        // and its catalog shard, and every KV write its shard and catalog:
        // an eviction inside the request would store an empty document or
        // leave a shard without its write.
        let mut s = PeerStore::open("notes", Tables::new()).unwrap();
        s.cache_limit = 2;
        let mut ids = Vec::new();
        for i in 0..40 {
            let doc = run(
                &s,
                json!({"op": "doc.create", "ops": [{"op": "put", "path": "/i", "value": i}]}),
            )
            .unwrap()["doc"]
                .as_str()
                .unwrap()
                .to_string();
            ids.push(doc);
            run(
                &s,
                json!({"op": "kv.put", "key": format!("k{i}"), "value": i}),
            )
            .unwrap();
        }
        let written = vec![s.take_writes().unwrap()];
        let mut r = reopen(&written);
        r.cache_limit = 2;
        for (i, doc) in ids.iter().enumerate() {
            assert_eq!(
                run(&r, json!({"op": "doc.get", "doc": doc})).unwrap(),
                json!({"i": i})
            );
            assert_eq!(
                run(&r, json!({"op": "kv.conflicts", "key": format!("k{i}")})).unwrap(),
                json!([i])
            );
        }
    }

    #[test]
    fn the_records_match_the_native_layout() {
        let s = PeerStore::open("notes", Tables::new()).unwrap();
        run(&s, json!({"op": "kv.put", "key": "a", "value": 1})).unwrap();
        let w = s.take_writes().unwrap();
        // One KV index entry, the shard's and the catalog's chunks and metadata.
        assert_eq!(s.record_count(Table::Kv), 1);
        assert_eq!(s.record_count(Table::Docs), 2);
        assert_eq!(s.record_count(Table::Chunks), 2);
        assert!(w.iter().any(
            |w| matches!(w, masq_core::records::Write::Put { table: Table::Kv, key, value }
            if *key == index_key("notes", "default", "a") && value == b"1")
        ));
    }
}
