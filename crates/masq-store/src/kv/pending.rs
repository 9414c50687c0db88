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

use std::time::Duration;

use masq_core::doc::DocId;

use crate::error::Result;
use crate::storage::Db;
use crate::store::{DeferredCommit, LoadedDoc, LockedDoc, Origin, Staged, Store};

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
    commits: &mut Vec<DeferredCommit>,
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

/// The folder thread's body: fold dirty documents until the store closes.
pub(crate) fn run_folder(store: Store) {
    let queue = &store.inner.folder;
    while let Some(docs) = queue.take() {
        match fold_docs(&store, docs.clone()) {
            Ok(()) => queue.done(Vec::new()),
            Err(e) => {
                tracing::error!("folding pending key-value writes failed (will retry): {e}");
                queue.done(if queue.stopping() { Vec::new() } else { docs });
                std::thread::sleep(FOLD_RETRY_DELAY);
            }
        }
    }
}

impl Store {
    /// Folds every pending local key-value write into its shard document now
    /// and waits until it is committed (a running fold round included).
    /// Writes are already durable and readable before this; it matters only
    /// for what Automerge (and so sync, export and history) sees.
    pub fn flush_kv(&self) -> Result<()> {
        let queue = &self.inner.folder;
        while let Some(docs) = queue.take_for_flush() {
            if let Err(e) = fold_docs(self, docs.clone()) {
                queue.put_back(docs);
                return Err(e);
            }
        }
        Ok(())
    }
}
