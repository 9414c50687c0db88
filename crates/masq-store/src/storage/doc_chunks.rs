//! Reading and writing one document's records (the layout is the core's:
//! [`masq_core::layout::doc_chunks`]): a compacted snapshot plus incremental
//! chunks, and a small metadata record.
//!
//! Architecture invariant: knows the byte layout only; never decodes Automerge.

use masq_core::layout::doc_chunks::{self as layout, incr_key, snapshot_key};
pub use masq_core::layout::doc_chunks::{
    doc_key, needs_compaction, DocMeta, StoredDoc, COMPACT_AFTER_BYTES, COMPACT_AFTER_CHUNKS,
};
use masq_core::records::WriteSet;

use super::Db;
use crate::error::Result;

impl Db {
    /// Reads a document's metadata, or `None` if the document was never stored.
    pub fn doc_meta(&self, app: &str, doc: &str) -> Result<Option<DocMeta>> {
        match self.docs.get(doc_key(app, doc))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(DocMeta::decode(doc, &bytes)?)),
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

    /// Stages removal of all of a document's chunks and metadata.
    pub fn stage_remove_doc(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        app: &str,
        doc: &str,
    ) -> Result<()> {
        let mut writes = WriteSet::new();
        layout::stage_remove_doc(&mut writes, app, doc);
        self.stage(batch, writes)
    }

    /// Ids of every document stored for `app` (metadata records), in key order.
    pub fn doc_ids(&self, app: &str) -> Result<Vec<String>> {
        let prefix = layout::app_prefix(app);
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
