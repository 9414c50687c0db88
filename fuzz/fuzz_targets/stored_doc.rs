//! A document read back from disk (metadata record, snapshot, incremental
//! chunks), as if the disk or another program had scribbled on it: every
//! input decodes or is `Error::Corrupt`; never a panic.
//!
//! Input layout: `u16 LE` metadata length, the metadata bytes, then chunks as
//! `u16 LE` length + bytes; the first chunk is the snapshot.
#![no_main]
use libfuzzer_sys::fuzz_target;
use masq_store::storage::doc_chunks::{DocMeta, StoredDoc};

fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = data.split_first_chunk::<2>()?;
    let len = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (part, rest) = rest.split_at(len);
    *data = rest;
    Some(part)
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Some(meta) = take(&mut data) else { return };
    let meta = DocMeta::decode("fuzz", meta).unwrap_or_default();
    let snapshot = take(&mut data).map(<[u8]>::to_vec);
    let mut chunks = Vec::new();
    while let Some(c) = take(&mut data) {
        chunks.push(c.to_vec());
    }
    let stored = StoredDoc {
        meta,
        snapshot,
        chunks,
    };
    if let Ok(doc) = masq_store::store::decode_stored_doc("fuzz", stored) {
        // A document that decodes must also render as JSON without panicking.
        let _ = masq_store::doc::json::read_root(&doc, None);
    }
});
