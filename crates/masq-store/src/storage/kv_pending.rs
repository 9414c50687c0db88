//! Reading and writing local key-value writes that wait, durably, to be
//! folded into their shard documents. The record layout is the core's
//! ([`masq_core::layout::kv_pending`]); `kv::pending` says why and when
//! they are folded.
//!
//! Architecture invariant: knows the byte layout only; never decodes Automerge
//! or JSON.

use masq_core::layout::kv_pending::{self as layout, doc_prefix};
pub use masq_core::layout::kv_pending::{decode_record, encode_record, PendingRecord, PendingScan};
use masq_core::records::WriteSet;

use super::Db;
use crate::error::Result;

impl Db {
    /// Stages one pending write into `batch`.
    pub fn stage_pending(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        app: &str,
        doc: &str,
        seq: u64,
        key: &str,
        value: Option<&str>,
    ) {
        batch.insert(
            &self.kv_pending,
            layout::record_key(app, doc, seq),
            encode_record(key, value),
        );
    }

    /// Stages the removal of folded pending writes into `batch`.
    pub fn stage_unpending(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        app: &str,
        doc: &str,
        seqs: impl IntoIterator<Item = u64>,
    ) -> Result<()> {
        let mut writes = WriteSet::new();
        for seq in seqs {
            layout::stage_unpending(&mut writes, app, doc, seq);
        }
        self.stage(batch, writes)
    }

    /// A document's pending writes, oldest first.
    pub fn load_pending(&self, app: &str, doc: &str) -> Result<Vec<PendingRecord>> {
        let prefix = doc_prefix(app, doc);
        let mut out = Vec::new();
        for guard in self.kv_pending.prefix(&prefix) {
            let (k, v) = guard.into_inner()?;
            out.push(layout::decode_keyed(doc, prefix.len(), &k, &v)?);
        }
        Ok(out)
    }

    /// Every document with pending writes, and the highest sequence number
    /// (read once at open, to resume folding and numbering).
    pub fn scan_pending(&self) -> Result<PendingScan> {
        let mut scan = PendingScan::default();
        for guard in self.kv_pending.iter() {
            scan.add_key(&guard.key()?);
        }
        Ok(scan)
    }
}
