//! Which shard documents have pending key-value writes, and the signals
//! between the writers that mark them, the folder thread that takes them
//! and [`Store::flush_kv`](crate::Store::flush_kv), which waits for a
//! running round. Only the queue: folding itself is
//! [`crate::kv::pending`]'s, and this module knows nothing of documents or
//! the store.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};

use masq_core::doc::DocId;

/// A shard document: its app and its id.
pub(crate) type ShardDoc = (String, DocId);

/// The dirty set, and the folder thread's and flushers' signals.
#[derive(Default)]
pub(crate) struct FoldQueue {
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
    dirty: BTreeSet<ShardDoc>,
    /// A fold round runs (its documents are no longer in `dirty`).
    busy: bool,
    /// The store is closing: fold what is dirty, then exit.
    stop: bool,
}

impl FoldQueue {
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

    /// Whether the store is closing.
    pub(crate) fn stopping(&self) -> bool {
        self.state().stop
    }

    /// The folder thread waits for work; `None` once stopped with nothing
    /// left. The round runs until [`done`](Self::done).
    pub(crate) fn take(&self) -> Option<Vec<ShardDoc>> {
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
    pub(crate) fn done(&self, failed: Vec<ShardDoc>) {
        let mut st = self.state();
        st.dirty.extend(failed);
        st.busy = false;
        self.idle.notify_all();
    }

    /// For a flush on the calling thread: waits while a round runs with
    /// nothing else dirty, then takes what is dirty; `None`: nothing is
    /// pending any more.
    pub(crate) fn take_for_flush(&self) -> Option<Vec<ShardDoc>> {
        let mut st = self.state();
        while st.dirty.is_empty() && st.busy {
            st = match self.idle.wait(st) {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
        }
        if st.dirty.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut st.dirty).into_iter().collect())
    }

    /// A flush failed: its documents are dirty again.
    pub(crate) fn put_back(&self, docs: Vec<ShardDoc>) {
        self.state().dirty.extend(docs);
    }
}
