//! How one document is laid out: a compacted snapshot plus incremental
//! change chunks, and a small metadata record.
//!
//! Keys (all in [`Table::Chunks`]):
//! - `app \0 doc \0 S` → the snapshot (Automerge `save()` bytes), at most one;
//! - `app \0 doc \0 I <seq u64 BE>` → incremental chunks (Automerge change
//!   bytes), in write order.
//!
//! The metadata record ([`Table::Docs`], key `app \0 doc`, [`DocMeta`] as
//! JSON) counts the incremental chunks so [`needs_compaction`] can decide when
//! to fold them into a new snapshot. Compaction writes the new snapshot and
//! removes the folded chunks in one write set, so a crash leaves either the old
//! or the new layout.
//!
//! Architecture invariant: knows the byte layout only; never decodes Automerge
//! (that is [`doc::stored`](crate::doc::stored)).

use serde::{Deserialize, Serialize};

use crate::doc::{DocError, Result};
use crate::records::{Table, WriteSet};

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
    /// Parses a metadata record read back from storage (`doc` names it in errors).
    pub fn decode(doc: &str, bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| DocError::Corrupt {
            doc: doc.to_string(),
            reason: format!("metadata: {e}"),
        })
    }

    /// The stored form of the record.
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Sequence numbers of the live incremental chunks. Chunks are numbered
    /// consecutively and a compaction removes all of them, so the live ones
    /// are exactly the last `incr_chunks` numbers below `next_seq`. Reading
    /// and removing by this range (rather than scanning the document's key
    /// prefix) never walks the tombstones that earlier compactions left in
    /// an LSM tree: with a prefix scan, a document edited 100k times paid for
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

    /// Bytes the document takes in storage, a rough guide to its size in memory.
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

/// The stored form of one document, as the shell read it back.
#[derive(Debug, Default)]
pub struct StoredDoc {
    /// Its metadata.
    pub meta: DocMeta,
    /// The snapshot, if one was written.
    pub snapshot: Option<Vec<u8>>,
    /// Incremental chunks in write order (the keys of
    /// [`DocMeta::live_seqs`]).
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

/// `app \0`: the prefix of every metadata record of an app.
pub fn app_prefix(app: &str) -> Vec<u8> {
    let mut k = app.as_bytes().to_vec();
    k.push(0);
    k
}

/// `app \0 doc \0`: the prefix of a document's chunks.
pub fn chunk_prefix(app: &str, doc: &str) -> Vec<u8> {
    let mut k = doc_key(app, doc);
    k.push(0);
    k
}

/// The key of a document's snapshot.
pub fn snapshot_key(app: &str, doc: &str) -> Vec<u8> {
    let mut k = chunk_prefix(app, doc);
    k.push(b'S');
    k
}

/// The key of a document's incremental chunk number `seq`.
pub fn incr_key(app: &str, doc: &str, seq: u64) -> Vec<u8> {
    let mut k = chunk_prefix(app, doc);
    k.push(b'I');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Stages one incremental chunk (and the updated metadata).
pub fn stage_chunk(
    writes: &mut WriteSet,
    app: &str,
    doc: &str,
    meta: &mut DocMeta,
    bytes: &[u8],
) -> Result<()> {
    writes.put(Table::Chunks, incr_key(app, doc, meta.next_seq), bytes);
    *meta = meta.with_chunk(bytes.len());
    writes.put(Table::Docs, doc_key(app, doc), meta.encode()?);
    Ok(())
}

/// Stages a compaction: `snapshot` replaces the old snapshot and every live
/// incremental chunk. Call it *instead of* [`stage_chunk`] for the change
/// that makes compaction due (the snapshot contains it): a chunk put and
/// removed in one set would be ambiguous.
pub fn stage_snapshot(
    writes: &mut WriteSet,
    app: &str,
    doc: &str,
    meta: &mut DocMeta,
    snapshot: &[u8],
) -> Result<()> {
    for seq in meta.live_seqs() {
        writes.remove(Table::Chunks, incr_key(app, doc, seq));
    }
    writes.put(Table::Chunks, snapshot_key(app, doc), snapshot);
    meta.incr_chunks = 0;
    meta.incr_bytes = 0;
    meta.snapshot_bytes = snapshot.len() as u64;
    writes.put(Table::Docs, doc_key(app, doc), meta.encode()?);
    Ok(())
}

/// Stages removal of all of a document's chunks and its metadata.
pub fn stage_remove_doc(writes: &mut WriteSet, app: &str, doc: &str) {
    writes.remove_prefix(Table::Chunks, chunk_prefix(app, doc));
    writes.remove(Table::Docs, doc_key(app, doc));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Write;

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

    /// The keys are the stored format: pinned byte for byte.
    #[test]
    fn keys_and_metadata_bytes_are_pinned() {
        assert_eq!(doc_key("a", "d"), b"a\0d");
        assert_eq!(snapshot_key("a", "d"), b"a\0d\0S");
        assert_eq!(incr_key("a", "d", 258), b"a\0d\0I\0\0\0\0\0\0\x01\x02");
        let meta = DocMeta {
            next_seq: 3,
            incr_chunks: 2,
            incr_bytes: 10,
            snapshot_bytes: 0,
        };
        assert_eq!(
            meta.encode().unwrap(),
            br#"{"next_seq":3,"incr_chunks":2,"incr_bytes":10,"snapshot_bytes":0}"#
        );
        assert_eq!(DocMeta::decode("d", &meta.encode().unwrap()).unwrap(), meta);
        assert!(matches!(
            DocMeta::decode("d", b"{"),
            Err(DocError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_snapshot_removes_exactly_the_live_chunks() {
        let mut meta = DocMeta::default();
        let mut w = WriteSet::new();
        for _ in 0..3 {
            stage_chunk(&mut w, "a", "d", &mut meta, b"xy").unwrap();
        }
        assert_eq!(meta.live_seqs(), 0..3);
        let mut w = WriteSet::new();
        stage_snapshot(&mut w, "a", "d", &mut meta, b"snap").unwrap();
        let removed: Vec<Vec<u8>> = w
            .iter()
            .filter_map(|x| match x {
                Write::Remove { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            removed,
            (0..3).map(|s| incr_key("a", "d", s)).collect::<Vec<_>>()
        );
        assert_eq!(meta.live_seqs(), 3..3);
        assert_eq!(meta.snapshot_bytes, 4);
    }
}
