//! How one document is laid out in the database: a compacted snapshot plus
//! incremental change chunks, and a small metadata record.
//!
//! Keys (all in the `chunks` keyspace):
//! - `app \0 doc \0 S` → the snapshot (Automerge `save()` bytes), at most one;
//! - `app \0 doc \0 I <seq u64 BE>` → incremental chunks (Automerge change
//!   bytes), in write order.
//!
//! The metadata record (`docs` keyspace, key `app \0 doc`) counts the
//! incremental chunks so [`needs_compaction`] can decide when to fold them into
//! a new snapshot. Compaction writes the new snapshot and deletes the folded
//! chunks in one atomic batch, so a crash leaves either the old or the new layout.
//!
//! Architecture invariant: knows the byte layout only; never decodes Automerge.

use serde::{Deserialize, Serialize};

use super::Db;
use crate::error::{Error, Result};

/// Fold incremental chunks into a snapshot once they exceed this many bytes
/// (or half the snapshot, if that is larger)...
pub const COMPACT_AFTER_BYTES: u64 = 512 * 1024;
/// ...or this many chunks, once they are also at least half the snapshot's
/// size. Loading replays every incremental chunk, so this bounds the work of
/// a cold load, while scaling with the snapshot keeps the bytes rewritten by
/// compactions linear in the document's size: a document edited 100 000 times
/// is re-snapshotted tens of times, not thousands.
pub const COMPACT_AFTER_CHUNKS: u32 = 64;

/// Per-document metadata kept beside the chunks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DocMeta {
    /// Sequence number the next incremental chunk gets.
    pub next_seq: u64,
    /// Number of incremental chunks since the last snapshot.
    pub incr_chunks: u32,
    /// Bytes in incremental chunks since the last snapshot.
    pub incr_bytes: u64,
    /// Size of the current snapshot (0 if none).
    pub snapshot_bytes: u64,
}

impl DocMeta {
    /// Parses a metadata record read back from disk (`doc` names it in errors).
    pub fn decode(doc: &str, bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            doc: doc.to_string(),
            reason: format!("metadata: {e}"),
        })
    }

    /// Sequence numbers of the live incremental chunks. Chunks are numbered
    /// consecutively and a compaction deletes all of them, so the live ones
    /// are exactly the last `incr_chunks` numbers below `next_seq`. Reading
    /// and deleting by this range (rather than scanning the document's key
    /// prefix) never walks the tombstones that earlier compactions left in
    /// the LSM tree: with a prefix scan, a document edited 100k times paid for
    /// every deleted chunk on each compaction.
    pub fn live_seqs(&self) -> std::ops::Range<u64> {
        self.next_seq.saturating_sub(u64::from(self.incr_chunks))..self.next_seq
    }

    /// The metadata after one more incremental chunk of `len` bytes.
    pub fn with_chunk(&self, len: usize) -> DocMeta {
        DocMeta {
            next_seq: self.next_seq + 1,
            incr_chunks: self.incr_chunks + 1,
            incr_bytes: self.incr_bytes + len as u64,
            snapshot_bytes: self.snapshot_bytes,
        }
    }

    /// Bytes the document takes on disk, a rough guide to its size in memory.
    pub fn stored_bytes(&self) -> u64 {
        self.snapshot_bytes + self.incr_bytes
    }
}

/// Whether a document's incremental part has grown past the thresholds.
pub fn needs_compaction(meta: &DocMeta) -> bool {
    let half_snapshot = meta.snapshot_bytes / 2;
    meta.incr_bytes > COMPACT_AFTER_BYTES.max(half_snapshot)
        || (meta.incr_chunks > COMPACT_AFTER_CHUNKS && meta.incr_bytes >= half_snapshot)
}

/// The stored form of one document, as read back from disk.
#[derive(Debug, Default)]
pub struct StoredDoc {
    /// Its metadata.
    pub meta: DocMeta,
    /// The snapshot, if one was written.
    pub snapshot: Option<Vec<u8>>,
    /// Incremental chunks in write order.
    pub chunks: Vec<Vec<u8>>,
}

/// `app \0 doc`: the key of a document's metadata and the prefix of its chunks.
pub fn doc_key(app: &str, doc: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(app.len() + doc.len() + 1);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(doc.as_bytes());
    k
}

fn chunk_prefix(app: &str, doc: &str) -> Vec<u8> {
    let mut k = doc_key(app, doc);
    k.push(0);
    k
}

fn snapshot_key(app: &str, doc: &str) -> Vec<u8> {
    let mut k = chunk_prefix(app, doc);
    k.push(b'S');
    k
}

fn incr_key(app: &str, doc: &str, seq: u64) -> Vec<u8> {
    let mut k = chunk_prefix(app, doc);
    k.push(b'I');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl Db {
    /// Reads a document's metadata, or `None` if the document was never stored.
    pub fn doc_meta(&self, app: &str, doc: &str) -> Result<Option<DocMeta>> {
        match self.docs.get(doc_key(app, doc))? {
            None => Ok(None),
            Some(bytes) => DocMeta::decode(doc, &bytes).map(Some),
        }
    }

    /// Reads everything stored for a document.
    pub fn load_doc(&self, app: &str, doc: &str) -> Result<Option<StoredDoc>> {
        let Some(meta) = self.doc_meta(app, doc)? else {
            return Ok(None);
        };
        let snapshot = self.chunks.get(snapshot_key(app, doc))?.map(|s| s.to_vec());
        let live = meta.live_seqs();
        let mut chunks = Vec::with_capacity(meta.incr_chunks as usize);
        for guard in self
            .chunks
            .range(incr_key(app, doc, live.start)..incr_key(app, doc, live.end))
        {
            let (_, v) = guard.into_inner()?;
            chunks.push(v.to_vec());
        }
        Ok(Some(StoredDoc {
            meta,
            snapshot,
            chunks,
        }))
    }

    /// Stages one incremental chunk (and the updated metadata) into `batch`.
    pub fn stage_chunk(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        app: &str,
        doc: &str,
        meta: &mut DocMeta,
        bytes: &[u8],
    ) -> Result<()> {
        batch.insert(&self.chunks, incr_key(app, doc, meta.next_seq), bytes);
        *meta = meta.with_chunk(bytes.len());
        batch.insert(&self.docs, doc_key(app, doc), serde_json::to_vec(meta)?);
        Ok(())
    }

    /// Stages a compaction: `snapshot` replaces the old snapshot and every
    /// live incremental chunk. Call it *instead of* [`Db::stage_chunk`] for
    /// the change that makes compaction due (the snapshot contains it): a
    /// chunk inserted and removed in one batch would be ambiguous.
    pub fn stage_snapshot(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        app: &str,
        doc: &str,
        meta: &mut DocMeta,
        snapshot: &[u8],
    ) -> Result<()> {
        for seq in meta.live_seqs() {
            batch.remove(&self.chunks, incr_key(app, doc, seq));
        }
        batch.insert(&self.chunks, snapshot_key(app, doc), snapshot);
        meta.incr_chunks = 0;
        meta.incr_bytes = 0;
        meta.snapshot_bytes = snapshot.len() as u64;
        batch.insert(&self.docs, doc_key(app, doc), serde_json::to_vec(meta)?);
        Ok(())
    }

    /// Stages removal of all of a document's chunks and metadata.
    pub fn stage_remove_doc(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        app: &str,
        doc: &str,
    ) -> Result<()> {
        for guard in self.chunks.prefix(chunk_prefix(app, doc)) {
            batch.remove(&self.chunks, guard.key()?);
        }
        batch.remove(&self.docs, doc_key(app, doc));
        Ok(())
    }

    /// Ids of every document stored for `app` (metadata records), in key order.
    pub fn doc_ids(&self, app: &str) -> Result<Vec<String>> {
        let mut prefix = app.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for guard in self.docs.prefix(&prefix) {
            let key = guard.key()?;
            if let Ok(id) = std::str::from_utf8(&key[prefix.len()..]) {
                out.push(id.to_string());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod compaction_policy_tests {
    use super::*;

    /// 100 000 changes of 300 bytes to one document, snapshot = everything so
    /// far: compactions stay few and the bytes they rewrite stay linear.
    #[test]
    fn compaction_work_is_linear_in_document_size() {
        let mut meta = DocMeta::default();
        let (mut compactions, mut rewritten) = (0u64, 0u64);
        for _ in 0..100_000 {
            meta.incr_chunks += 1;
            meta.incr_bytes += 300;
            if needs_compaction(&meta) {
                meta.snapshot_bytes += meta.incr_bytes;
                rewritten += meta.snapshot_bytes;
                meta.incr_bytes = 0;
                meta.incr_chunks = 0;
                compactions += 1;
            }
        }
        let total = 100_000 * 300;
        assert!(compactions < 40, "{compactions} compactions");
        assert!(
            rewritten < 4 * total,
            "{rewritten} bytes rewritten for {total}"
        );
        // Small documents still compact after 64 chunks.
        let small = DocMeta {
            incr_chunks: 65,
            incr_bytes: 65 * 100,
            snapshot_bytes: 2_000,
            ..Default::default()
        };
        assert!(needs_compaction(&small));
    }
}
