//! Write-behind for local key-value writes: a put is durable and visible at
//! once, and reaches its shard's Automerge document a moment later, folded
//! together with the other writes that shard received meanwhile.
//!
//! **Why.** One Automerge change per put costs 10–20 µs when the puts spread
//! over a bucket's 256 shard documents (each put lands in a cold document),
//! plus the change's own bytes and chunk record. A put therefore writes only
//! its index entry and a pending record (`storage::kv_pending`) in one durable
//! batch, appends the write to the shard's in-memory pending list
//! ([`LoadedDoc::kv_pending`]) and returns. The folder, a thread the store
//! owns, folds each dirty shard's pending writes into *one* change, written in
//! one batch with the removal of their records.
//!
//! Invariants:
//! - Whoever changes a shard document for another reason (a remote change is
//!   applied, [`Bucket::conflicts`](super::Bucket::conflicts) reads it) folds
//!   its pending writes first, under the same lock. So a local write becomes
//!   an Automerge change before any change this device receives after it,
//!   exactly as if it had been applied at put time, and the winner every
//!   device picks is the same.
//! - A shard never holds more than [`MAX_PENDING_PER_SHARD`] pending writes:
//!   a put that would pass it folds inline, which bounds memory and makes
//!   writers slow down when the folder falls behind.
//! - Records are removed only in the batch that writes their folded change,
//!   so a crash leaves each write either pending (folded at the next open) or
//!   folded, never lost or applied twice.
//! - Sync sends a shard as folded so far; the fold's commit notifies the sync
//!   engine like any local change.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::doc::DocId;
use crate::error::Result;
use crate::storage::Db;
use crate::store::{LoadedDoc, LockedDoc, Origin, Staged, Store};

pub use masq_core::kv::MAX_PENDING_PER_SHARD;
/// Most shard documents one fold round locks and commits in one batch. Small,
/// because a writer of one of them waits for the whole batch's Automerge work
/// (16: `masq bench local` embedded put p99 1.1–1.3 ms; 64: 1.3–2.7 ms).
pub const FOLD_DOCS_PER_BATCH: usize = 16;
/// Pause before the folder retries after a failed fold (disk full, ...).
pub const FOLD_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Folds `g`'s pending writes, then `extra`, into one change of its document
/// (a key written more than once gets its last value),
/// and stages the removal of the folded records into `batch`. The caller took
/// the document's heads before and commits `batch` with `commit_docs`. On error
/// the document and its pending list are unchanged.
pub(crate) fn fold_into<'e>(
    db: &Db,
    batch: &mut fjall::OwnedWriteBatch,
    app: &str,
    id: &DocId,
    g: &mut LoadedDoc,
    extra: impl IntoIterator<Item = (&'e str, Option<&'e str>)>,
) -> Result<()> {
    masq_core::kv::fold(&mut g.doc, &g.kv_pending, extra)?;
    let pending = std::mem::take(&mut g.kv_pending);
    db.stage_unpending(batch, app, id.as_str(), pending.iter().map(|p| p.seq))
}

/// Folds the pending writes of `docs` (those that have any), committing up to
/// [`FOLD_DOCS_PER_BATCH`] documents per batch, each batch's documents locked
/// together through [`Store::doc_set`] (the one lock order). The batches are enqueued back to
/// back and waited for at the end, so they share group commits instead of
/// paying one fsync each.
pub(crate) fn fold_docs(store: &Store, mut docs: Vec<(String, DocId)>) -> Result<()> {
    docs.sort();
    docs.dedup();
    let mut commits = Vec::new();
    let folded = fold_docs_enqueue(store, &docs, &mut commits);
    let mut durable = Ok(());
    for c in commits {
        if let Err(e) = c.wait(store) {
            durable = durable.and(Err(e));
        }
    }
    folded.and(durable)
}

/// [`fold_docs`]'s folding part: pushes each batch's commit to `commits`.
fn fold_docs_enqueue(
    store: &Store,
    docs: &[(String, DocId)],
    commits: &mut Vec<crate::store::DeferredCommit>,
) -> Result<()> {
    let db = store.db();
    for chunk in docs.chunks(FOLD_DOCS_PER_BATCH) {
        let set = store.doc_set(chunk.iter().cloned())?;
        let mut batch = db.batch();
        let mut staged: Vec<Staged<'_>> = Vec::new();
        for locked in set.lock_each() {
            let LockedDoc {
                app,
                id,
                guard: mut g,
            } = locked?;
            if g.kv_pending.is_empty() {
                continue;
            }
            let before = g.doc.get_heads();
            if let Err(e) = fold_into(db, &mut batch, app, id, &mut g, []) {
                drop(g);
                // Earlier documents of this batch changed in memory only.
                for s in &staged {
                    store.forget(&s.app, &s.id);
                }
                return Err(e);
            }
            staged.push(Staged {
                app: app.to_string(),
                id: id.clone(),
                guard: g,
                before,
                patches: None,
            });
        }
        if !staged.is_empty() {
            commits.push(store.commit_docs_deferred(batch, staged, &Origin::Local)?);
        }
    }
    Ok(())
}

/// Which shard documents have pending writes, for the folder thread and
/// [`Store::flush_kv`].
#[derive(Default)]
pub(crate) struct Folder {
    /// The dirty set and the thread's state.
    state: Mutex<FolderState>,
    /// Wakes the folder thread (something became dirty, or stop).
    wake: Condvar,
    /// Wakes `flush` waiters when a fold round ends.
    idle: Condvar,
}

#[derive(Default)]
struct FolderState {
    /// Shard documents with pending writes not yet taken by a fold round.
    dirty: BTreeSet<(String, DocId)>,
    /// A fold round runs (its documents are no longer in `dirty`).
    busy: bool,
    /// The store is closing: fold what is dirty, then exit.
    stop: bool,
}

impl Folder {
    fn state(&self) -> std::sync::MutexGuard<'_, FolderState> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Notes that `id` has pending writes.
    pub(crate) fn mark(&self, app: &str, id: &DocId) {
        let mut st = self.state();
        if st.dirty.insert((app.to_string(), id.clone())) && st.dirty.len() == 1 {
            self.wake.notify_one();
        }
    }

    /// Tells the folder thread to fold what is dirty and exit.
    pub(crate) fn stop(&self) {
        self.state().stop = true;
        self.wake.notify_all();
    }

    /// Waits for work; `None` once stopped with nothing left.
    fn take(&self) -> Option<Vec<(String, DocId)>> {
        let mut st = self.state();
        while st.dirty.is_empty() && !st.stop {
            st = match self.wake.wait(st) {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
        }
        if st.dirty.is_empty() {
            return None;
        }
        st.busy = true;
        Some(std::mem::take(&mut st.dirty).into_iter().collect())
    }

    /// Ends a round; documents of a failed round go back to `dirty`.
    fn done(&self, failed: Vec<(String, DocId)>) {
        let mut st = self.state();
        st.dirty.extend(failed);
        st.busy = false;
        self.idle.notify_all();
    }

    /// Folds every pending write now, on the calling thread, and waits for a
    /// running round to end.
    pub(crate) fn flush(&self, store: &Store) -> Result<()> {
        loop {
            let docs: Vec<(String, DocId)> = {
                let mut st = self.state();
                while st.dirty.is_empty() && st.busy {
                    st = match self.idle.wait(st) {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    };
                }
                if st.dirty.is_empty() {
                    return Ok(());
                }
                std::mem::take(&mut st.dirty).into_iter().collect()
            };
            if let Err(e) = fold_docs(store, docs.clone()) {
                self.state().dirty.extend(docs);
                return Err(e);
            }
        }
    }

    /// The folder thread's body: fold dirty documents until stopped.
    pub(crate) fn run(&self, store: Store) {
        while let Some(docs) = self.take() {
            match fold_docs(&store, docs.clone()) {
                Ok(()) => self.done(Vec::new()),
                Err(e) => {
                    tracing::error!("folding pending key-value writes failed (will retry): {e}");
                    let stopping = self.state().stop;
                    self.done(if stopping { Vec::new() } else { docs });
                    std::thread::sleep(FOLD_RETRY_DELAY);
                }
            }
        }
    }
}
