//! The materialized KV index: the winning value of every key of every
//! bucket, so get and list never walk Automerge structures.
//!
//! Keys (all in [`Table::Kv`]): `app \0 bucket \0 key` → the winner as JSON
//! text. Keys sort by (app, bucket, key), so a bucket is one key range and a
//! list is a range scan from [`list_start`].
//!
//! Architecture invariant: knows the byte layout only.

use crate::records::{Table, WriteSet};

/// `app \0 bucket \0 key`.
pub fn index_key(app: &str, bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(app.len() + bucket.len() + key.len() + 2);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Where a list of `bucket`'s keys that start with `prefix`, strictly after
/// `start_after`, begins; every key of the list starts with the returned
/// prefix (the scan stops at the first that does not).
pub fn list_start(
    app: &str,
    bucket: &str,
    prefix: &str,
    start_after: Option<&str>,
) -> (Vec<u8>, Vec<u8>) {
    let prefix = index_key(app, bucket, prefix);
    let start = match start_after {
        Some(s) => {
            let mut k = index_key(app, bucket, s);
            k.push(0); // strictly after
            std::cmp::max(k, prefix.clone())
        }
        None => prefix.clone(),
    };
    (start, prefix)
}

/// Stages a key's new winner: its JSON text, or `None` when no value is left.
pub fn stage_winner(
    writes: &mut WriteSet,
    app: &str,
    bucket: &str,
    key: &str,
    json: Option<&[u8]>,
) {
    let ik = index_key(app, bucket, key);
    match json {
        Some(v) => writes.put(Table::Kv, ik, v),
        None => writes.remove(Table::Kv, ik),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_pinned_and_lists_start_strictly_after() {
        assert_eq!(index_key("a", "b", "k"), b"a\0b\0k");
        let (start, prefix) = list_start("a", "b", "p", None);
        assert_eq!(
            (start.as_slice(), prefix.as_slice()),
            (&b"a\0b\0p"[..], &b"a\0b\0p"[..])
        );
        let (start, _) = list_start("a", "b", "p", Some("pq"));
        assert_eq!(start, b"a\0b\0pq\0");
        // A start before the prefix starts at the prefix.
        let (start, _) = list_start("a", "b", "p", Some("a"));
        assert_eq!(start, b"a\0b\0p");
    }
}
