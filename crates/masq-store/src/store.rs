//! The store's lower layer: one fjall database, a bounded cache of loaded
//! Automerge documents, their locks, the one commit path, and per-app event
//! channels. [`Store::app`] hands out an [`App`]; the document API
//! (`App::docs`, in [`crate::doc`]) and the key-value API (`App::bucket`, in
//! [`crate::kv`]) are built above this module, and it knows neither
//! (opening, with the key-value folder thread, is [`crate::open`]).
//!
//! Every document write follows one path (`commit_docs`): take the documents'
//! locks (the app catalog first, then content documents, so two writers never
//! deadlock), change them in memory, stage the new change bytes of each into one
//! fjall batch together with any index entries, commit it durably, and only then
//! publish events and return. If the commit fails, the changed documents are
//! dropped from the cache so memory never runs ahead of disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::{ActorId, Automerge, ChangeHash};
use lru::LruCache;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::fold_queue::FoldQueue;
use crate::storage::doc_chunks::DocMeta;
use crate::storage::kv_pending::PendingRecord;
use crate::storage::{Db, Durability};
use masq_core::doc::stored::stage_doc_change;
use masq_core::doc::DocId;
use masq_core::kv::bucket_of_shard;
use masq_core::records::WriteSet;

/// Default memory budget for loaded documents.
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;
/// Events buffered per app before a slow subscriber is told it lagged.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;
/// Rough in-memory cost of a loaded document per stored byte (Automerge's op
/// set is larger than its compressed encoding), used for cache accounting.
pub const MEMORY_PER_STORED_BYTE: usize = 6;
/// Fixed in-memory overhead assumed per loaded document.
pub const MEMORY_PER_DOC: usize = 4 * 1024;

/// Change notices buffered for the sync engine before it must resync everything.
pub const CHANGE_CHANNEL_CAPACITY: usize = 16 * 1024;

/// A committed change of one document (app, doc, who made it).
pub type DocChanged = (String, DocId, Origin);

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Memory budget for loaded documents (least recently used are evicted).
    pub cache_bytes: usize,
    /// Fold local key-value writes into their shard documents on a
    /// background thread (the default). When `false`, they are folded only
    /// when a shard needs it (a remote change, `conflicts`, a full pending
    /// list) or on [`Store::flush_kv`]; until then other devices do not get
    /// them. Tests use it to hold writes pending.
    pub fold_in_background: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            cache_bytes: DEFAULT_CACHE_BYTES,
            fold_in_background: true,
        }
    }
}

pub use masq_core::api::event::{Event, Origin};

/// A loaded document and its storage bookkeeping.
pub(crate) struct LoadedDoc {
    /// The Automerge document.
    pub doc: Automerge,
    /// Chunk counters, as stored.
    pub meta: DocMeta,
    /// Whether anything is stored for it yet.
    pub exists: bool,
    /// Deleted on this device while this copy was loaded (`Docs::delete`):
    /// a writer that waited for the lock with this handle must not write it
    /// back. In memory only; the store forgets the copy right after.
    pub deleted: bool,
    /// Local key-value writes of a shard document not yet folded into `doc`
    /// (durable as records; see [`crate::kv::pending`]). Always empty for
    /// other documents.
    pub kv_pending: Vec<PendingRecord>,
}

type DocKey = (String, DocId);
pub(crate) type DocHandle = Arc<Mutex<LoadedDoc>>;

/// Least-recently-used cache of loaded documents under a memory budget.
struct DocCache {
    /// The documents; an entry in use elsewhere (Arc shared) is never evicted,
    /// so there is at most one in-memory copy of each document.
    lru: LruCache<DocKey, (DocHandle, usize)>,
    /// Sum of the cost estimates of cached documents.
    bytes: usize,
    /// The budget.
    budget: usize,
    /// Counts removals (evictions and forgets). A miss loads from disk
    /// outside the cache mutex; if a removal happened meanwhile, what it
    /// loaded may predate a commit of the removed copy, so it loads again.
    removals: u64,
}

impl DocCache {
    fn evict(&mut self) {
        let mut skipped = Vec::new();
        while self.bytes > self.budget {
            let Some((k, (h, cost))) = self.lru.pop_lru() else {
                break;
            };
            if Arc::strong_count(&h) > 1 {
                skipped.push((k, (h, cost)));
                continue;
            }
            self.bytes = self.bytes.saturating_sub(cost);
            self.removals += 1;
        }
        for (k, v) in skipped {
            self.lru.put(k, v);
        }
    }
}

pub(crate) struct StoreInner {
    /// The database.
    pub db: Db,
    /// Loaded documents.
    cache: Mutex<DocCache>,
    /// This process's Automerge actor. Fresh on every open so a crash that lost
    /// unflushed changes can never make us reuse an (actor, seq) pair.
    actor: ActorId,
    /// Per-app event channels.
    events: Mutex<HashMap<String, broadcast::Sender<Event>>>,
    /// Every committed document change, for the sync engine.
    changes: broadcast::Sender<DocChanged>,
    /// The data directory.
    dir: PathBuf,
    /// Shard documents with pending key-value writes, and the folder thread's state.
    pub(crate) folder: FoldQueue,
    /// Sequence number of the next pending key-value write (store-wide).
    kv_seq: AtomicU64,
    /// Serializes the device group's read-decide-commit steps
    /// ([`Store::membership_lock`]).
    membership: Mutex<()>,
}

/// Owns the folder thread; shared by the [`Store`] handles applications hold
/// (not by the thread's own), so dropping the last of them stops the thread,
/// lets it fold what is pending, and joins it before the database closes.
struct StoreOwner {
    inner: Arc<StoreInner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StoreOwner {
    fn drop(&mut self) {
        self.inner.folder.stop();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the key-value folder thread panicked");
            }
        }
    }
}

/// A masq store: documents and key-value buckets of every app on this device.
/// Cheap to clone; all clones share one database and cache.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<StoreInner>,
    /// Held for its `Drop` (stops the folder thread); `None` only in the
    /// folder thread's own handle.
    _owner: Option<Arc<StoreOwner>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// Longest [`Store::close`] waits for fjall to flush its memtables.
///
/// Why a limit: the flush only spares the next open a journal replay (every
/// acknowledged write is already durable in the journal), and fjall's own
/// wait has no bound (a close hung forever in CI, fjall's workers idle).
/// Why 5 s: a flush of fjall's largest memtables (64 MiB) at the speed of a
/// slow disk; past that the store closes anyway and the journal replays.
pub const CLOSE_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

pub use masq_core::names::MAX_NAME_LEN;

/// Checks an app or bucket name: 1–64 of `[A-Za-z0-9._-]`
/// ([`masq_core::names::validate_name`]).
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    Ok(masq_core::names::validate_name(what, name)?)
}

/// Loads of one document outside the cache mutex that [`Store::doc_handle`]
/// tries before it loads under the mutex (see there).
const MAX_UNLOCKED_LOADS: usize = 3;

/// Documents to be locked together, in the store's one lock order: by app,
/// then the app's catalog shards before its other documents, each group by
/// id. Every writer that holds more than one document lock at a time takes
/// them through [`DocSet::lock`], so two writers never wait for each other in
/// a cycle; nobody sorts by hand.
pub(crate) struct DocSet {
    /// (app, id, handle), in lock order, each document once.
    entries: Vec<(String, DocId, DocHandle)>,
}

/// One locked document of a [`DocSet`].
pub(crate) struct LockedDoc<'a> {
    /// Its app.
    pub app: &'a str,
    /// Its id.
    pub id: &'a DocId,
    /// The lock.
    pub guard: MutexGuard<'a, LoadedDoc>,
}

impl DocSet {
    /// Locks every document, in order.
    pub(crate) fn lock(&self) -> Result<Vec<LockedDoc<'_>>> {
        self.lock_each().collect()
    }

    /// Whether `f` holds for any of the documents, each looked at under its
    /// lock alone (never two at once).
    pub(crate) fn any(&self, f: impl Fn(&LoadedDoc) -> bool) -> Result<bool> {
        for (_, _, h) in &self.entries {
            let g = h
                .lock()
                .map_err(|_| Error::Storage("lock poisoned".into()))?;
            if f(&g) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Locks the documents one by one, in order, as the caller advances:
    /// a writer that works through them (a fold round, a received batch)
    /// holds each only from the moment it reaches it, so writers of the
    /// later ones are not kept waiting for the earlier ones' work. (Taking
    /// all 16 of a fold round up front cost `masq bench local` a quarter of
    /// its embedded put rate.) The order is the same as [`lock`](Self::lock)'s.
    pub(crate) fn lock_each(&self) -> impl Iterator<Item = Result<LockedDoc<'_>>> {
        self.entries.iter().map(|(app, id, h)| {
            h.lock()
                .map(|guard| LockedDoc { app, id, guard })
                .map_err(|_| Error::Storage("lock poisoned".into()))
        })
    }
}

/// Takes the document `id` out of a locked set.
pub(crate) fn take_locked<'a>(
    locked: &mut Vec<LockedDoc<'a>>,
    id: &DocId,
) -> Result<LockedDoc<'a>> {
    let pos = locked
        .iter()
        .position(|l| l.id == id)
        .ok_or_else(|| Error::Storage(format!("document {id} is not in the locked set")))?;
    Ok(locked.remove(pos))
}

/// One document's part in a write: its handle, locked, and its heads before.
pub(crate) struct Staged<'a> {
    pub app: String,
    pub id: DocId,
    pub guard: MutexGuard<'a, LoadedDoc>,
    pub before: Vec<ChangeHash>,
    /// The change's patches, when the writer logged them while applying;
    /// otherwise (`None`) they are computed with `diff(before, after)`,
    /// which walks the whole document, for subscribers only.
    pub patches: Option<Vec<automerge::Patch>>,
}

impl Store {
    /// The shared part of a store over `db`, its folder queue already
    /// holding what the last run left pending ([`Store::open_with`] makes
    /// it, then starts the folder thread).
    pub(crate) fn inner(
        db: Db,
        dir: PathBuf,
        opts: &StoreOptions,
        folder: FoldQueue,
        next_kv_seq: u64,
    ) -> Arc<StoreInner> {
        Arc::new(StoreInner {
            db,
            cache: Mutex::new(DocCache {
                lru: LruCache::unbounded(),
                bytes: 0,
                budget: opts.cache_bytes,
                removals: 0,
            }),
            actor: masq_core::doc::new_actor_id(),
            events: Mutex::new(HashMap::new()),
            changes: broadcast::channel(CHANGE_CHANNEL_CAPACITY).0,
            dir,
            folder,
            kv_seq: AtomicU64::new(next_kv_seq),
            membership: Mutex::new(()),
        })
    }

    /// The folder thread's own handle: it does not keep the store open.
    pub(crate) fn for_folder(inner: Arc<StoreInner>) -> Store {
        Store {
            inner,
            _owner: None,
        }
    }

    /// The handle applications hold; the last one dropped stops and joins
    /// `folder_thread`.
    pub(crate) fn owning(
        inner: Arc<StoreInner>,
        folder_thread: Option<std::thread::JoinHandle<()>>,
    ) -> Store {
        Store {
            _owner: Some(Arc::new(StoreOwner {
                inner: inner.clone(),
                thread: folder_thread,
            })),
            inner,
        }
    }

    /// Closes this handle, the way a store should be closed: if it is the
    /// last handle of the store, the key-value folder folds what is pending
    /// and stops (as on drop); then fjall's memtables are flushed on a
    /// thread of its own, waited for at most `limit`. Returns whether the
    /// flush finished in time. Either way nothing acknowledged is lost (it is
    /// in the journal, which the next open replays); a late flush goes on in
    /// the background and holds the data directory until it ends.
    ///
    /// Dropping a `Store` never waits on fjall: a handle dropped without
    /// `close` (a cancelled task, a panic) only makes the next open replay
    /// the journal. Blocking: from async code use [`close_async`](Self::close_async).
    pub fn close_within(mut self, limit: std::time::Duration) -> bool {
        let inner = self.inner.clone();
        // Stop and join the folder first (when this is the last handle), so
        // the flush also covers what it folded.
        drop(self._owner.take());
        drop(self);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("masq-close-flush".into())
            .spawn(move || {
                inner.db.flush_memtables();
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => done_rx.recv_timeout(limit).is_ok(),
            Err(e) => {
                tracing::warn!("closing the store without a flush: {e}");
                false
            }
        }
    }

    /// [`close_within`](Self::close_within) with [`CLOSE_FLUSH_LIMIT`].
    pub fn close(self) -> bool {
        self.close_within(CLOSE_FLUSH_LIMIT)
    }

    /// [`close`](Self::close) on a blocking thread, for async code.
    pub async fn close_async(self) -> bool {
        tokio::task::spawn_blocking(move || self.close())
            .await
            .unwrap_or(false)
    }

    /// Number for the next pending key-value write.
    pub(crate) fn next_kv_seq(&self) -> u64 {
        self.inner.kv_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The database (for modules that keep their own records beside documents).
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Held while the device group is read, decided on and committed
    /// (`masq_core::sync::membership`): the sync engine's handling of an
    /// introduction or a removal, and the user's `devices remove`, each read
    /// the group and commit what they decided; without this lock one could
    /// commit on a group the other just changed (a device introduced back in
    /// while its removal commits). Short: no I/O but the commit inside.
    pub fn membership_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The namespace of one app.
    pub fn app(&self, name: &str) -> Result<App> {
        validate_name("app", name)?;
        Ok(App {
            store: self.clone(),
            name: name.to_string(),
        })
    }

    /// Names of apps that have stored anything.
    pub fn apps(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for g in self.inner.db.docs.iter() {
            let k = g.key()?;
            if let Some(pos) = k.iter().position(|b| *b == 0) {
                let name = String::from_utf8_lossy(&k[..pos]).to_string();
                if out.last() != Some(&name) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// Number of documents currently loaded in memory, and their estimated cost.
    pub fn cache_usage(&self) -> (usize, usize) {
        match self.inner.cache.lock() {
            Ok(c) => (c.lru.len(), c.bytes),
            Err(_) => (0, 0),
        }
    }

    /// The event channel of an app (created on first use).
    pub(crate) fn events(&self, app: &str) -> broadcast::Sender<Event> {
        let mut map = match self.inner.events.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(app.to_string())
            .or_insert_with(|| broadcast::channel(EVENT_CHANNEL_CAPACITY).0)
            .clone()
    }

    /// Whether anybody listens to `app`'s events (patches are only computed then).
    pub(crate) fn has_listeners(&self, app: &str) -> bool {
        match self.inner.events.lock() {
            Ok(m) => m.get(app).map(|s| s.receiver_count() > 0).unwrap_or(false),
            Err(_) => false,
        }
    }

    pub(crate) fn publish(&self, app: &str, ev: Event) {
        // No receivers is fine: nobody is watching.
        let _ = self.events(app).send(ev);
    }

    /// Announces a committed change of `id` to the sync engine as coming
    /// from `origin` (for a commit that holds changes of several origins).
    pub(crate) fn announce_change(&self, app: &str, id: &DocId, origin: Origin) {
        let _ = self
            .inner
            .changes
            .send((app.to_string(), id.clone(), origin));
    }

    /// Notices of every committed document change (used by the sync engine).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<DocChanged> {
        self.inner.changes.subscribe()
    }

    /// Returns the handle of a document, loading it from disk on a miss.
    ///
    /// The load runs outside the cache mutex, so a slow load (a large
    /// document, a cold disk) never stalls every other document's lookup.
    /// Two loads of one document race harmlessly: the first to insert wins
    /// and the other copy is dropped. A copy loaded while any document was
    /// removed from the cache (an eviction, a failed commit's forget) may
    /// predate a commit made through the removed handle, so it is loaded
    /// again; after [`MAX_UNLOCKED_LOADS`] such tries the load runs under the
    /// mutex, as nothing can then change underneath.
    pub(crate) fn doc_handle(&self, app: &str, id: &DocId) -> Result<DocHandle> {
        let key = (app.to_string(), id.clone());
        let lock_cache = || {
            self.inner
                .cache
                .lock()
                .map_err(|_| Error::Storage("cache lock poisoned".into()))
        };
        for _ in 0..MAX_UNLOCKED_LOADS {
            let removals = {
                let mut cache = lock_cache()?;
                if let Some((h, _)) = cache.lru.get(&key) {
                    return Ok(h.clone());
                }
                cache.removals
            };
            let loaded = self.load_from_disk(app, id)?;
            let mut cache = lock_cache()?;
            if let Some((h, _)) = cache.lru.get(&key) {
                return Ok(h.clone());
            }
            if cache.removals == removals {
                return Ok(Self::insert_loaded(&mut cache, key, loaded));
            }
        }
        let mut cache = lock_cache()?;
        if let Some((h, _)) = cache.lru.get(&key) {
            return Ok(h.clone());
        }
        let loaded = self.load_from_disk(app, id)?;
        Ok(Self::insert_loaded(&mut cache, key, loaded))
    }

    fn insert_loaded(cache: &mut DocCache, key: DocKey, loaded: LoadedDoc) -> DocHandle {
        let cost = MEMORY_PER_DOC + loaded.meta.stored_bytes() as usize * MEMORY_PER_STORED_BYTE;
        let h = Arc::new(Mutex::new(loaded));
        cache.lru.put(key, (h.clone(), cost));
        cache.bytes += cost;
        cache.evict();
        h
    }

    /// Handles of `docs` in the store's one lock order (see [`DocSet`]),
    /// each once. Loading happens here, before any document lock is taken.
    pub(crate) fn doc_set(
        &self,
        docs: impl IntoIterator<Item = (String, DocId)>,
    ) -> Result<DocSet> {
        let mut keys: Vec<(String, bool, DocId)> = docs
            .into_iter()
            .map(|(app, id)| (app, !masq_core::doc::is_catalog(&id), id))
            .collect();
        keys.sort();
        keys.dedup();
        let entries = keys
            .into_iter()
            .map(|(app, _, id)| self.doc_handle(&app, &id).map(|h| (app, id, h)))
            .collect::<Result<_>>()?;
        Ok(DocSet { entries })
    }

    fn load_from_disk(&self, app: &str, id: &DocId) -> Result<LoadedDoc> {
        match self.inner.db.load_doc(app, id.as_str())? {
            None => Ok(LoadedDoc {
                doc: Automerge::new().with_actor(self.inner.actor.clone()),
                meta: DocMeta::default(),
                exists: false,
                deleted: false,
                kv_pending: self.load_pending(app, id)?,
            }),
            Some(stored) => {
                let meta = stored.meta.clone();
                let mut doc = decode_stored_doc(id.as_str(), stored)?;
                doc.set_actor(self.inner.actor.clone());
                Ok(LoadedDoc {
                    doc,
                    meta,
                    exists: true,
                    deleted: false,
                    kv_pending: self.load_pending(app, id)?,
                })
            }
        }
    }

    fn load_pending(&self, app: &str, id: &DocId) -> Result<Vec<PendingRecord>> {
        if bucket_of_shard(id).is_some() {
            self.inner.db.load_pending(app, id.as_str())
        } else {
            Ok(Vec::new())
        }
    }

    /// After a peer's tombstone removed `id`'s data (its catalog said
    /// deleted): makes the deletion final against local writers.
    ///
    /// A received batch locks only the catalog, not the documents it
    /// tombstones, so a local change may hold the cached copy meanwhile and
    /// commit it after the batch. Locking that copy here (with no other lock
    /// held, so no lock order is at stake) marks it deleted for every writer
    /// still waiting with the handle, and removes whatever such a change
    /// wrote between the batch and this lock (even if its batch still waits
    /// in the group-commit queue: batches commit in queue order). The deletion wins, as it does
    /// against a concurrent local change on the device that deleted.
    pub(crate) fn seal_deleted(&self, app: &str, id: &DocId) -> Result<()> {
        let h = self.doc_handle(app, id)?;
        let mut g = h
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".into()))?;
        g.deleted = true;
        g.exists = false;
        g.doc = Automerge::new();
        g.meta = DocMeta::default();
        // Removed again unconditionally: a change committed through this
        // handle may still be queued for the group commit, invisible to a
        // read, and this batch is queued after it, so it commits after it.
        let db = &self.inner.db;
        let mut batch = db.batch();
        db.stage_remove_doc(&mut batch, app, id.as_str())?;
        let result = db.write(batch).and_then(|t| db.wait_durable(t));
        drop(g);
        self.forget(app, id);
        result
    }

    /// Drops a document from the cache (after a failed commit, or a delete).
    pub(crate) fn forget(&self, app: &str, id: &DocId) {
        if let Ok(mut c) = self.inner.cache.lock() {
            if let Some((_, cost)) = c.lru.pop(&(app.to_string(), id.clone())) {
                c.bytes = c.bytes.saturating_sub(cost);
            }
            // Counted even when the document was not cached: a load of it
            // running outside the mutex may have read it before the change
            // that made us forget it (a deletion from a peer), and must not
            // be inserted.
            c.removals += 1;
        }
    }

    fn recost(&self, app: &str, id: &DocId, meta: &DocMeta) {
        if let Ok(mut c) = self.inner.cache.lock() {
            let cost = MEMORY_PER_DOC + meta.stored_bytes() as usize * MEMORY_PER_STORED_BYTE;
            let key = (app.to_string(), id.clone());
            let mut delta: Option<(usize, usize)> = None;
            if let Some((_, old)) = c.lru.peek_mut(&key) {
                delta = Some((*old, cost));
                *old = cost;
            }
            if let Some((old, new)) = delta {
                c.bytes = c.bytes.saturating_sub(old) + new;
                c.evict();
            }
        }
    }

    /// Stages what changed in each of `docs` since its `before` heads into
    /// `batch` (compacting where due), commits durably, then publishes events.
    /// On failure every staged document is dropped from the cache.
    pub(crate) fn commit_docs(
        &self,
        batch: fjall::OwnedWriteBatch,
        docs: Vec<Staged<'_>>,
        origin: &Origin,
    ) -> Result<()> {
        self.commit_docs_deferred(batch, docs, origin)?.wait(self)
    }

    /// [`Store::commit_docs`] up to the durable wait, which the caller does
    /// with [`DeferredCommit::wait`]: several commits enqueued back to back
    /// then share one group commit (the KV folder commits many shards).
    /// The documents' locks are released on return.
    pub(crate) fn commit_docs_deferred(
        &self,
        mut batch: fjall::OwnedWriteBatch,
        mut docs: Vec<Staged<'_>>,
        origin: &Origin,
    ) -> Result<DeferredCommit> {
        let db = &self.inner.db;
        let mut changed = Vec::new();
        let result = (|| -> Result<u64> {
            let mut writes = WriteSet::new();
            for s in docs.iter_mut() {
                let Some(meta) = stage_doc_change(
                    &mut writes,
                    &s.app,
                    &s.id,
                    &s.guard.doc,
                    s.guard.exists.then_some(&s.guard.meta),
                    &s.before,
                    *origin == Origin::Local,
                )?
                else {
                    continue;
                };
                changed.push((s.app.clone(), s.id.clone(), meta));
            }
            db.stage(&mut batch, writes)?;
            db.write(batch)
        })();
        let ticket = match result {
            Ok(t) => t,
            Err(e) => {
                for s in docs.iter() {
                    self.forget(&s.app, &s.id);
                }
                return Err(e);
            }
        };
        for s in docs.iter_mut() {
            if let Some((_, _, meta)) = changed.iter().find(|(a, id, _)| *id == s.id && *a == s.app)
            {
                s.guard.meta = meta.clone();
                s.guard.exists = true;
                self.recost(&s.app, &s.id, meta);
                let _ = self
                    .inner
                    .changes
                    .send((s.app.clone(), s.id.clone(), origin.clone()));
                let app = s.app.as_str();
                if self.has_listeners(app) && !masq_core::doc::is_internal(&s.id) {
                    let heads = s.guard.doc.get_heads();
                    let raw = match s.patches.take() {
                        Some(p) => p,
                        None => s.guard.doc.diff(&s.before, &heads),
                    };
                    let patches = raw
                        .iter()
                        .map(|p| masq_core::doc::json::patch_or_too_deep(&s.guard.doc, p))
                        .collect();
                    self.publish(
                        app,
                        Event::Doc {
                            doc: s.id.clone(),
                            heads: heads.iter().map(|h| h.to_string()).collect(),
                            patches,
                            origin: origin.clone(),
                        },
                    );
                }
            }
        }
        // Release the document locks before waiting for the (shared) fsync, so
        // writers of the same documents queue for the next group commit.
        let ids: Vec<(String, DocId)> =
            docs.iter().map(|s| (s.app.clone(), s.id.clone())).collect();
        drop(docs);
        Ok(DeferredCommit { ticket, ids })
    }
}

/// A commit of [`Store::commit_docs_deferred`] that may not be durable yet.
#[must_use = "a commit is acknowledged only once `wait` returns Ok"]
pub(crate) struct DeferredCommit {
    /// The group-commit ticket of its batch.
    ticket: u64,
    /// Its documents, dropped from the cache if the write fails.
    ids: Vec<(String, DocId)>,
}

impl DeferredCommit {
    /// Waits until the commit is durable.
    pub(crate) fn wait(self, store: &Store) -> Result<()> {
        if let Err(e) = store.inner.db.wait_durable(self.ticket) {
            // Memory is ahead of disk: drop those documents so they reload from disk.
            for (app, id) in self.ids {
                store.forget(&app, &id);
            }
            return Err(e);
        }
        Ok(())
    }
}

/// One app's namespace in a store.
#[derive(Clone, Debug)]
pub struct App {
    pub(crate) store: Store,
    pub(crate) name: String,
}

impl App {
    /// The app's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store it lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Subscribes to every change of this app (documents and buckets).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.store.events(&self.name).subscribe()
    }
}

/// Rebuilds a document from what was read back from disk (see
/// [`masq_core::doc::stored::decode_stored_doc`]): bytes that do not decode
/// are `Error::Corrupt` naming `doc`, never a panic.
pub fn decode_stored_doc(
    doc: &str,
    stored: crate::storage::doc_chunks::StoredDoc,
) -> Result<Automerge> {
    Ok(masq_core::doc::stored::decode_stored_doc(doc, stored)?)
}
