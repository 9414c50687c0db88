//! Storage: the one fjall database a store keeps everything in.
//!
//! Every piece of state a store has — document chunks, document metadata, the
//! materialized KV index and, later, peers, ratchet sessions and sync states —
//! lives in one fjall [`Database`](fjall::Database) in separate keyspaces, so that
//! related writes can go in one atomic [`fjall::OwnedWriteBatch`].
//!
//! The core decides what to store ([`masq_core::records::WriteSet`], under the
//! keys of [`masq_core::layout`]); [`Db::stage`] turns its writes into fjall
//! batch operations, one keyspace per core [`Table`].
//!
//! Architecture invariant: this module knows nothing of Automerge, JSON or the
//! network. It stores bytes under keys and makes them durable; [`doc_chunks`]
//! knows the layout of a document's chunks but not what is inside them.

pub mod data_dir;
pub mod doc_chunks;
pub mod kv_pending;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::error::{Error, Result};
use masq_core::records::{Table, Write, WriteSet};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Durability {
    /// After the journal is `fsync`ed: survives power loss. Concurrent writers
    /// share one `fsync` (group commit). The default.
    #[default]
    Fsync,
    /// After the journal write reaches OS buffers: survives a crash of the
    /// process, not of the machine. Much faster on slow disks.
    Buffered,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "buffered" => Ok(Durability::Buffered),
            other => Err(format!("unknown durability {other:?} (fsync|buffered)")),
        }
    }
}

/// Keyspace names: the core's [`Table`] names. Changing one is a storage
/// format change.
pub mod keyspaces {
    use masq_core::records::Table;
    /// Document metadata ([`Table::Docs`]).
    pub const DOCS: &str = Table::Docs.name();
    /// Document chunks ([`Table::Chunks`]).
    pub const CHUNKS: &str = Table::Chunks.name();
    /// The materialized KV index ([`Table::Kv`]).
    pub const KV: &str = Table::Kv.name();
    /// Store-level facts ([`Table::Meta`]).
    pub const META: &str = Table::Meta.name();
    /// Local key-value writes not yet folded ([`Table::KvPending`]).
    pub const KV_PENDING: &str = Table::KvPending.name();
}

/// The store's fjall database and its keyspaces.
pub struct Db {
    /// The fjall database; owns the journal and the directory lock.
    db: Database,
    /// Document metadata.
    pub docs: Keyspace,
    /// Document chunks.
    pub chunks: Keyspace,
    /// Materialized KV index.
    pub kv: Keyspace,
    /// Store-level facts.
    pub meta: Keyspace,
    /// Local key-value writes waiting to be folded into shard documents.
    pub kv_pending: Keyspace,
    /// How writes are acknowledged.
    durability: Durability,
    /// Batches committed to the journal (statistics).
    written: AtomicU64,
    /// The group-commit queue (see [`Db::wait_durable`]).
    queue: Mutex<CommitQueue>,
    /// Wakes followers when a group commit round ends.
    queue_cv: Condvar,
    /// Where the database lives, for error messages.
    path: PathBuf,
    /// Number of fsyncs issued (for benchmarks: writes per fsync).
    fsyncs: AtomicU64,
    /// Set when a commit round failed (disk full, read-only, I/O error):
    /// closing then skips the memtable flush, which could never finish.
    write_failed: AtomicBool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// Failed commit rounds remembered so their writers get the error.
pub const MAX_REMEMBERED_FAILURES: usize = 64;
/// Bytes the probe file writes when a commit fails, to tell a full disk.
const WRITE_PROBE_BYTES: usize = 64 * 1024;

/// Why a commit round failed, kept to answer every writer of that round.
#[derive(Debug, Clone)]
enum WriteFailure {
    /// The disk is full.
    DiskFull,
    /// The file system is read-only.
    ReadOnly,
    /// Anything else, as the engine said it.
    Other(String),
}

/// Batches waiting for the next group commit round.
#[derive(Default)]
struct CommitQueue {
    /// Batches not yet committed, in arrival order.
    pending: Vec<fjall::OwnedWriteBatch>,
    /// Tickets handed out so far.
    enqueued: u64,
    /// Every ticket up to this one has been through a commit round.
    done: u64,
    /// A leader is committing right now.
    leader_active: bool,
    /// Ticket ranges whose round failed, with the error.
    failures: Vec<(u64, u64, WriteFailure)>,
}

/// fjall's block cache size; the documents' own cache is separate (see `store`).
pub const FJALL_CACHE_BYTES: u64 = 32 * 1024 * 1024;

impl Db {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        data_dir::prepare(dir)?;
        let path = dir.join("db");
        let db = Database::builder(&path)
            .cache_size(FJALL_CACHE_BYTES)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => Error::Locked(dir.to_path_buf()),
                fjall::Error::Io(io) if io.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
                    Error::ReadOnly(dir.to_path_buf())
                }
                fjall::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                    Error::DiskFull(dir.to_path_buf())
                }
                other => Error::from(other),
            })?;
        let open = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Self {
            docs: open(keyspaces::DOCS)?,
            chunks: open(keyspaces::CHUNKS)?,
            kv: open(keyspaces::KV)?,
            meta: open(keyspaces::META)?,
            kv_pending: open(keyspaces::KV_PENDING)?,
            db,
            durability,
            written: AtomicU64::new(0),
            queue: Mutex::new(CommitQueue::default()),
            queue_cv: Condvar::new(),
            path: dir.to_path_buf(),
            fsyncs: AtomicU64::new(0),
            write_failed: AtomicBool::new(false),
        })
    }

    /// The configured durability.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// A new empty write batch.
    pub fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch()
    }

    /// The keyspace that holds one of the core's tables.
    pub fn keyspace(&self, table: Table) -> &Keyspace {
        match table {
            Table::Docs => &self.docs,
            Table::Chunks => &self.chunks,
            Table::Kv => &self.kv,
            Table::Meta => &self.meta,
            Table::KvPending => &self.kv_pending,
        }
    }

    /// Stages the core's `writes` into `batch`, in order. A prefix removal
    /// is expanded here into the keys stored under the prefix now (the batch
    /// is committed under the document locks that keep them from changing).
    pub fn stage(&self, batch: &mut fjall::OwnedWriteBatch, writes: WriteSet) -> Result<()> {
        for w in writes {
            match w {
                Write::Put { table, key, value } => batch.insert(self.keyspace(table), key, value),
                Write::Remove { table, key } => batch.remove(self.keyspace(table), key),
                Write::RemovePrefix { table, prefix } => {
                    let ks = self.keyspace(table);
                    for guard in ks.prefix(&prefix) {
                        batch.remove(ks, guard.key()?);
                    }
                }
            }
        }
        Ok(())
    }

    /// Commits `batch` atomically and returns once it is durable under the
    /// configured [`Durability`]. Only then may the caller acknowledge the write.
    pub fn commit(&self, batch: fjall::OwnedWriteBatch) -> Result<()> {
        let ticket = self.write(batch)?;
        self.wait_durable(ticket)
    }

    /// Commits `batch` and returns once it is fsynced, whatever the
    /// configured [`Durability`]. For the ratchet state that sealed an
    /// envelope about to leave: under `buffered`, a power cut after the
    /// envelope left would roll the state back and the next envelope would
    /// use the same message key again.
    pub fn commit_fsync(&self, batch: fjall::OwnedWriteBatch) -> Result<()> {
        self.commit(batch)?;
        if self.durability == Durability::Buffered {
            // The batch is in the journal (its round persisted to OS
            // buffers); this syncs the journal up to it and past.
            self.db.persist(PersistMode::SyncAll)?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Queues `batch` for the next group commit and returns a ticket for
    /// [`wait_durable`](Self::wait_durable). Callers release their locks in
    /// between, so writers that arrive while an fsync runs join the next one.
    pub fn write(&self, batch: fjall::OwnedWriteBatch) -> Result<u64> {
        let mut q = self
            .queue
            .lock()
            .map_err(|_| Error::Storage("commit queue poisoned".into()))?;
        q.pending.push(batch);
        q.enqueued += 1;
        Ok(q.enqueued)
    }

    /// Returns once the batch behind `ticket` is committed and durable under the
    /// configured [`Durability`].
    ///
    /// Group commit (leader/follower): the first waiter that finds no commit in
    /// progress becomes the leader, takes every queued batch, commits them to the
    /// journal in order and makes them durable with one `persist` call; the
    /// others wait on a condition variable. Writers arriving meanwhile only touch
    /// the queue, never fjall's journal lock, so the next round takes them all.
    pub fn wait_durable(&self, ticket: u64) -> Result<()> {
        let mut q = self
            .queue
            .lock()
            .map_err(|_| Error::Storage("commit queue poisoned".into()))?;
        loop {
            if q.done >= ticket {
                return match q
                    .failures
                    .iter()
                    .find(|(lo, hi, _)| (*lo..=*hi).contains(&ticket))
                {
                    Some((_, _, failure)) => Err(match failure {
                        WriteFailure::DiskFull => Error::DiskFull(self.path.clone()),
                        WriteFailure::ReadOnly => Error::ReadOnly(self.path.clone()),
                        WriteFailure::Other(msg) => Error::Storage(msg.clone()),
                    }),
                    None => Ok(()),
                };
            }
            if q.leader_active {
                q = self
                    .queue_cv
                    .wait(q)
                    .map_err(|_| Error::Storage("commit queue poisoned".into()))?;
                continue;
            }
            q.leader_active = true;
            let batches = std::mem::take(&mut q.pending);
            let lo = q.done + 1;
            let hi = q.enqueued;
            drop(q);
            let result = self.commit_round(batches);
            q = self
                .queue
                .lock()
                .map_err(|_| Error::Storage("commit queue poisoned".into()))?;
            if let Err(e) = result {
                let failure = self.diagnose(&e);
                self.write_failed.store(true, Ordering::Relaxed);
                tracing::error!("write to {} failed: {e} ({failure:?})", self.path.display());
                q.failures.push((lo, hi, failure));
                if q.failures.len() > MAX_REMEMBERED_FAILURES {
                    q.failures.remove(0);
                }
            }
            q.done = hi;
            q.leader_active = false;
            self.queue_cv.notify_all();
        }
    }

    /// Says why a commit round failed. The engine's own error after a failed
    /// write is often only "poisoned", so a small probe file shows whether the
    /// disk is full or read-only.
    fn diagnose(&self, e: &Error) -> WriteFailure {
        use std::io::{ErrorKind, Write};
        let probe = self.path.join(".write-probe");
        let result = std::fs::File::create(&probe).and_then(|mut f| {
            f.write_all(&[0u8; WRITE_PROBE_BYTES])?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&probe);
        match result {
            Err(io) if io.kind() == ErrorKind::StorageFull => WriteFailure::DiskFull,
            Err(io) if io.kind() == ErrorKind::ReadOnlyFilesystem => WriteFailure::ReadOnly,
            Err(io) => WriteFailure::Other(format!("{e} (writing a probe file: {io})")),
            Ok(()) if self.write_failed.load(Ordering::Relaxed) => WriteFailure::Other(format!(
                "{e}: an earlier write failed and the storage engine stopped; restart the store (acknowledged writes are safe)"
            )),
            Ok(()) => WriteFailure::Other(e.to_string()),
        }
    }

    fn commit_round(&self, batches: Vec<fjall::OwnedWriteBatch>) -> Result<()> {
        let n = batches.len() as u64;
        for b in batches {
            b.commit()?;
        }
        self.written.fetch_add(n, Ordering::Relaxed);
        let mode = match self.durability {
            Durability::Fsync => PersistMode::SyncAll,
            Durability::Buffered => PersistMode::Buffer,
        };
        self.db.persist(mode)?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// (batches written, persist rounds issued) since open: their ratio is the group-commit factor.
    pub fn commit_stats(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.fsyncs.load(Ordering::Relaxed),
        )
    }

    /// Flushes and fsyncs everything (used at shutdown).
    pub fn persist_all(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Flushes every keyspace's memtable to disk tables, so the next open
    /// does not replay the whole journal (a 100k-document store opened in
    /// 1.2 s without it, most of it journal replay). After a crash the
    /// journal still recovers everything, so this is an optimisation only.
    ///
    /// Blocking, and fjall gives no bound on how long it waits (seen here:
    /// forever, with its flush workers idle). Never call it from `Drop` or a
    /// runtime thread: [`Store::close`](crate::Store::close) runs it on a
    /// thread of its own with a time limit.
    pub fn flush_memtables(&self) {
        if self.write_failed.load(Ordering::Relaxed) {
            // The disk refused a write (full, read-only, failing): a flush
            // would wait forever for space. The journal has every
            // acknowledged write; the next open replays it.
            tracing::warn!("not flushing on close: a write to the data directory failed");
            return;
        }
        for ks in [
            &self.docs,
            &self.chunks,
            &self.kv,
            &self.meta,
            &self.kv_pending,
        ] {
            if let Err(e) = ks.rotate_memtable_and_wait() {
                tracing::warn!("flushing {:?} on close failed: {e}", ks.name());
            }
        }
    }
}
