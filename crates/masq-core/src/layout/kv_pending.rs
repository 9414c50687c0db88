//! How local key-value writes wait, durably, to be folded into their shard
//! documents (see [`kv`](crate::kv) for why and when they are folded).
//!
//! Keys (all in [`Table::KvPending`]):
//! - `app \0 doc \0 <seq u64 BE>` → one pending write: `1 key_len:u32 LE key
//!   value` for a put (the value as its JSON text), `0 key_len:u32 LE key` for
//!   a delete.
//!
//! `seq` grows across the whole store, so a document's pending writes read
//! back in the order they were made. A write's record goes in the same write
//! set as its index entry; folding removes the records in the same set as the
//! shard's new change chunk, so a crash leaves every write either pending or
//! folded, never lost and never applied twice.
//!
//! Architecture invariant: knows the byte layout only; never decodes Automerge
//! or JSON.

use std::collections::BTreeSet;

use crate::doc::{DocError, Result};
use crate::records::{Table, WriteSet};

/// One pending write as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    /// Store-wide order of the write.
    pub seq: u64,
    /// The key written.
    pub key: String,
    /// The new value as JSON text, `None` for a delete.
    pub value: Option<String>,
}

/// `app \0 doc \0`: the prefix of a document's pending writes.
pub fn doc_prefix(app: &str, doc: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(app.len() + doc.len() + 2 + 8);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(doc.as_bytes());
    k.push(0);
    k
}

/// The key of pending write `seq` of a document.
pub fn record_key(app: &str, doc: &str, seq: u64) -> Vec<u8> {
    let mut k = doc_prefix(app, doc);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Encodes a record's value (see the module docs).
pub fn encode_record(key: &str, value: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + key.len() + value.map_or(0, str::len));
    out.push(u8::from(value.is_some()));
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    if let Some(v) = value {
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Decodes a record's value; [`DocError::Corrupt`] naming `doc` on bad bytes.
pub fn decode_record(doc: &str, seq: u64, bytes: &[u8]) -> Result<PendingRecord> {
    let corrupt = |reason: &str| DocError::Corrupt {
        doc: doc.to_string(),
        reason: format!("pending key-value write {seq}: {reason}"),
    };
    let (&tag, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    if rest.len() < 4 {
        return Err(corrupt("truncated"));
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err(corrupt("truncated key"));
    }
    let (key, value) = rest.split_at(len);
    let key = std::str::from_utf8(key).map_err(|_| corrupt("key is not UTF-8"))?;
    let value = match tag {
        0 if value.is_empty() => None,
        1 => Some(
            std::str::from_utf8(value)
                .map_err(|_| corrupt("value is not UTF-8"))?
                .to_string(),
        ),
        _ => return Err(corrupt("unknown kind")),
    };
    Ok(PendingRecord {
        seq,
        key: key.to_string(),
        value,
    })
}

/// Decodes one stored record of `doc` given its full key (with the prefix of
/// [`doc_prefix`], `prefix_len` bytes long) and value.
pub fn decode_keyed(
    doc: &str,
    prefix_len: usize,
    key: &[u8],
    value: &[u8],
) -> Result<PendingRecord> {
    let seq = key
        .get(prefix_len..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| DocError::Corrupt {
            doc: doc.to_string(),
            reason: "pending key-value write with a malformed key".into(),
        })?;
    decode_record(doc, seq, value)
}

/// Stages one pending write.
pub fn stage_pending(
    writes: &mut WriteSet,
    app: &str,
    doc: &str,
    seq: u64,
    key: &str,
    value: Option<&str>,
) {
    writes.put(
        Table::KvPending,
        record_key(app, doc, seq),
        encode_record(key, value),
    );
}

/// Stages the removal of a folded pending write.
pub fn stage_unpending(writes: &mut WriteSet, app: &str, doc: &str, seq: u64) {
    writes.remove(Table::KvPending, record_key(app, doc, seq));
}

/// What a scan of every pending record found at open.
#[derive(Debug, Default)]
pub struct PendingScan {
    /// Every (app, doc) with at least one pending write.
    pub docs: BTreeSet<(String, String)>,
    /// The highest sequence number in use (0 if none).
    pub max_seq: u64,
}

impl PendingScan {
    /// Counts one stored record's key (keys that do not parse are skipped:
    /// their document loads them and reports them corrupt).
    pub fn add_key(&mut self, k: &[u8]) {
        let mut parts = k.splitn(3, |b| *b == 0);
        let (Some(app), Some(doc), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if let Ok(seq) = <[u8; 8]>::try_from(seq) {
            self.max_seq = self.max_seq.max(u64::from_be_bytes(seq));
        }
        self.docs.insert((
            String::from_utf8_lossy(app).into_owned(),
            String::from_utf8_lossy(doc).into_owned(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_bytes_are_corrupt() {
        for (key, value) in [("k", Some("{\"n\":1}")), ("ключ", None), ("x", Some(""))] {
            let bytes = encode_record(key, value);
            let rec = decode_record("d", 7, &bytes).unwrap();
            assert_eq!(rec.key, key);
            assert_eq!(rec.value.as_deref(), value);
            assert_eq!(rec.seq, 7);
        }
        for bad in [
            &[][..],
            &[1, 9, 0, 0, 0, b'a'],
            &[2, 0, 0, 0, 0],
            &[0, 1, 0, 0, 0, b'a', b'b'],
        ] {
            assert!(matches!(
                decode_record("d", 1, bad),
                Err(DocError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn keys_are_pinned_and_a_scan_finds_docs_and_the_highest_seq() {
        assert_eq!(record_key("a", "d", 1), b"a\0d\0\0\0\0\0\0\0\0\x01");
        assert_eq!(encode_record("k", Some("1")), b"\x01\x01\0\0\0k1");
        let mut scan = PendingScan::default();
        scan.add_key(&record_key("a", "d", 9));
        scan.add_key(&record_key("a", "e", 4));
        scan.add_key(b"junk");
        assert_eq!(scan.max_seq, 9);
        assert_eq!(scan.docs.len(), 2);
        let prefix = doc_prefix("a", "d");
        let rec = decode_keyed(
            "d",
            prefix.len(),
            &record_key("a", "d", 9),
            &encode_record("k", None),
        )
        .unwrap();
        assert_eq!((rec.seq, rec.value), (9, None));
        assert!(decode_keyed("d", prefix.len(), b"a\0d\0\x01", b"\0\0\0\0\0").is_err());
    }
}
