//! Storage: the one fjall database a store keeps everything in.
//!
//! Every piece of state a store has — document chunks, document metadata, the
//! materialized KV index and, later, peers, ratchet sessions and sync states —
//! lives in one fjall [`Database`](fjall::Database) in separate keyspaces, so that
//! related writes can go in one atomic [`fjall::OwnedWriteBatch`].
//!
//! Architecture invariant: this module knows nothing of Automerge, JSON or the
//! network. It stores bytes under keys and makes them durable; [`doc_chunks`]
//! knows the layout of a document's chunks but not what is inside them.

pub mod doc_chunks;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::error::{Error, Result};

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

/// Keyspace names. Changing one is a storage format change.
pub mod keyspaces {
    /// `app \0 doc` → document metadata (chunk counters, tombstone).
    pub const DOCS: &str = "docs";
    /// `app \0 doc \0 kind seq` → snapshot or incremental Automerge chunk.
    pub const CHUNKS: &str = "chunks";
    /// `app \0 bucket \0 key` → the winning JSON value (materialized KV index).
    pub const KV: &str = "kv";
    /// Store-level facts: device identity, peers, sessions, apps (one prefix each).
    pub const META: &str = "meta";
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
    /// How writes are acknowledged.
    durability: Durability,
    /// Count of batches committed to the journal (before any fsync).
    written: AtomicU64,
    /// Highest `written` value known to be fsynced.
    synced: AtomicU64,
    /// Held while one writer fsyncs; the others wait and usually find their
    /// batch already covered (group commit).
    sync_lock: Mutex<()>,
    /// Where the database lives, for error messages.
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// fjall's block cache size; the documents' own cache is separate (see `store`).
pub const FJALL_CACHE_BYTES: u64 = 32 * 1024 * 1024;

impl Db {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("db");
        let db = Database::builder(&path)
            .cache_size(FJALL_CACHE_BYTES)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => Error::Locked(dir.to_path_buf()),
                other => Error::from(other),
            })?;
        let open = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Self {
            docs: open(keyspaces::DOCS)?,
            chunks: open(keyspaces::CHUNKS)?,
            kv: open(keyspaces::KV)?,
            meta: open(keyspaces::META)?,
            db,
            durability,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            path: dir.to_path_buf(),
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

    /// Commits `batch` atomically and returns once it is durable under the
    /// configured [`Durability`]. Only then may the caller acknowledge the write.
    pub fn commit(&self, batch: fjall::OwnedWriteBatch) -> Result<()> {
        let ticket = self.write(batch)?;
        self.wait_durable(ticket)
    }

    /// Writes `batch` to the journal (visible to readers, not yet durable) and
    /// returns a ticket for [`wait_durable`](Self::wait_durable). Lets callers
    /// release their locks before waiting for the fsync they share with others.
    pub fn write(&self, batch: fjall::OwnedWriteBatch) -> Result<u64> {
        batch.commit()?;
        Ok(self.written.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Returns once the batch behind `ticket` (and every earlier one) is durable.
    pub fn wait_durable(&self, ticket: u64) -> Result<()> {
        match self.durability {
            Durability::Buffered => {
                self.db.persist(PersistMode::Buffer)?;
                Ok(())
            }
            Durability::Fsync => self.sync_through(ticket),
        }
    }

    /// Group commit: make sure every batch up to `ticket` is fsynced. Whoever
    /// holds the lock fsyncs everything written so far; writers queued behind it
    /// find their ticket already covered and return without a second fsync.
    fn sync_through(&self, ticket: u64) -> Result<()> {
        let _guard = self
            .sync_lock
            .lock()
            .map_err(|_| Error::Storage("sync lock poisoned".into()))?;
        if self.synced.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        self.db.persist(PersistMode::SyncAll)?;
        self.synced.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Flushes and fsyncs everything (used at shutdown).
    pub fn persist_all(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}
