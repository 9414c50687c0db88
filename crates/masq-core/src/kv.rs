//! The key-value API's logic: named buckets of JSON values per app,
//! replicated as Automerge maps and read through a materialized index.
//!
//! **Sharding.** A bucket is spread over [`SHARDS`] Automerge documents so a
//! bucket with a million keys is 256 documents of ~4k keys, each small enough
//! to load and change quickly. A key lives in shard `BLAKE3(key)[0]`, in the
//! document `_kv.<bucket>.<shard as two hex digits>`; the id is the same on
//! every device, so devices that write the same bucket before they ever synced
//! still write the same documents. Each shard's root map holds `key → value`,
//! the value stored as a JSON string (so a put replaces the whole value).
//!
//! **Winner.** Concurrent puts of one key are an Automerge map conflict; every
//! device picks the same winner (Automerge's deterministic rule: the op with
//! the highest (counter, actor)). [`all_values`] shows every kept value.
//!
//! **Index.** The winning value of every key is also stored in the KV index
//! ([`layout::kv_index`]), so get and list never walk Automerge structures:
//! for a local write in the write set that makes it durable, for a remote
//! change in the set that applies it ([`stage_reindex`]).
//!
//! **Write-behind.** A local write may reach its shard document a moment after
//! it is acknowledged: its pending record ([`layout::kv_pending`]) is folded
//! with the shard's other pending writes into one change ([`fold`]). Whoever
//! changes a shard for another reason folds its pending writes first, so a
//! local write becomes an Automerge change before any change this device
//! receives after it, and every device picks the same winner.
//!
//! Architecture invariant: logic over an `Automerge` handed in and write sets
//! handed back; no locks, no cache, no storage.

use std::collections::BTreeMap;

use automerge::{transaction::Transactable, Automerge, ReadDoc, ScalarValue, Value, ROOT};
use serde_json::Value as Json;

use crate::doc::json::{json_depth, scalar, MAX_DOC_DEPTH};
use crate::doc::{DocError, DocId, Result};
use crate::layout::kv_index;
use crate::layout::kv_pending::PendingRecord;
use crate::records::WriteSet;

/// Shards per bucket. Part of the replicated format: never change it for an existing bucket.
pub const SHARDS: usize = 256;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, serialized as JSON, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most entries returned by one `list` call.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Entries a `list` returns when the caller names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Most pending writes one shard keeps before a put folds them inline: bounds
/// memory, and makes writers slow down when folding falls behind.
pub const MAX_PENDING_PER_SHARD: usize = 256;

/// Options of a bucket's `list`.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only keys starting with this.
    pub prefix: String,
    /// Only keys strictly after this one (for paging).
    pub start_after: Option<String>,
    /// At most this many entries (capped at [`MAX_LIST_LIMIT`]; default 1000).
    pub limit: Option<usize>,
}

/// Which shard a key lives in.
pub fn shard_of(key: &str) -> usize {
    blake3::hash(key.as_bytes()).as_bytes()[0] as usize % SHARDS
}

/// The document id of a bucket's shard.
pub fn shard_doc(bucket: &str, shard: usize) -> DocId {
    DocId::internal(format!("_kv.{bucket}.{shard:02x}"))
}

/// The bucket a shard document belongs to, if `id` names one.
pub fn bucket_of_shard(id: &DocId) -> Option<&str> {
    let rest = id.as_str().strip_prefix("_kv.")?;
    let (bucket, shard) = rest.rsplit_once('.')?;
    (shard.len() == 2 && u8::from_str_radix(shard, 16).is_ok()).then_some(bucket)
}

/// Checks a key: non-empty, no NUL, at most [`MAX_KEY_BYTES`].
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.contains('\0') {
        return Err(DocError::InvalidName {
            what: "key",
            name: key.to_string(),
            rule: "non-empty, no NUL character",
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(DocError::TooLarge {
            what: "key",
            size: key.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// A value as stored in its shard and index: its JSON text, checked against
/// the depth and size limits.
pub fn encode_value(value: &Json) -> Result<String> {
    // The documents' depth rule holds for values too: apps read them back
    // as JSON, and every reader may walk them.
    if json_depth(value, MAX_DOC_DEPTH) > MAX_DOC_DEPTH {
        return Err(DocError::TooDeep {
            what: "value".into(),
            limit: MAX_DOC_DEPTH,
        });
    }
    let s = serde_json::to_string(value)?;
    if s.len() > MAX_VALUE_BYTES {
        return Err(DocError::TooLarge {
            what: "value",
            size: s.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(s)
}

/// Decodes one stored shard value (a JSON string; anything else is shown as
/// JSON of itself). A value from another device that is not JSON, or nests
/// deeper than [`MAX_DOC_DEPTH`], is shown as the string it is.
pub fn decode_value(v: &Value<'_>) -> Json {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => match serde_json::from_str::<Json>(s) {
                Ok(j) if json_depth(&j, MAX_DOC_DEPTH) <= MAX_DOC_DEPTH => j,
                _ => Json::String(s.to_string()),
            },
            other => scalar(other),
        },
        Value::Object(_) => Json::Null,
    }
}

/// The winning value of `key` in a shard document.
pub fn winner(doc: &Automerge, key: &str) -> Option<Json> {
    match doc.get(ROOT, key) {
        Ok(Some((v, _))) => Some(decode_value(&v)),
        _ => None,
    }
}

/// Every value Automerge kept for `key` in a shard document (more than one
/// after concurrent puts on different devices), the winner first.
pub fn all_values(doc: &Automerge, key: &str) -> Result<Vec<Json>> {
    let all = doc.get_all(ROOT, key)?;
    let mut vals: Vec<Json> = all.iter().map(|(v, _)| decode_value(v)).collect();
    if let Some(w) = winner(doc, key) {
        if let Some(pos) = vals.iter().position(|v| *v == w) {
            let w = vals.remove(pos);
            vals.insert(0, w);
        }
    }
    Ok(vals)
}

/// Stages index entries for `keys` of a shard document (after a remote
/// change), returning each key's new winner.
pub fn stage_reindex<'k>(
    writes: &mut WriteSet,
    app: &str,
    bucket: &str,
    doc: &Automerge,
    keys: impl IntoIterator<Item = &'k str>,
) -> Result<Vec<(String, Option<Json>)>> {
    let mut out = Vec::new();
    for key in keys {
        match winner(doc, key) {
            Some(v) => {
                kv_index::stage_winner(writes, app, bucket, key, Some(&serde_json::to_vec(&v)?));
                out.push((key.to_string(), Some(v)));
            }
            None => {
                kv_index::stage_winner(writes, app, bucket, key, None);
                out.push((key.to_string(), None));
            }
        }
    }
    Ok(out)
}

/// Applies one write (encoded value, `None`: delete) to a shard's root map.
pub fn apply_write(tx: &mut impl Transactable, key: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(s) => tx.put(ROOT, key, s)?,
        None => {
            if tx.get(ROOT, key)?.is_some() {
                tx.delete(ROOT, key)?
            }
        }
    }
    Ok(())
}

/// Folds `pending` writes, then `extra`, into one change of the shard `doc`
/// (a key written more than once gets its last value). On error the document
/// is unchanged. The caller stages the removal of the folded records
/// ([`layout::kv_pending::stage_unpending`](crate::layout::kv_pending::stage_unpending))
/// in the write set that stores the change.
pub fn fold<'e>(
    doc: &mut Automerge,
    pending: &[PendingRecord],
    extra: impl IntoIterator<Item = (&'e str, Option<&'e str>)>,
) -> Result<()> {
    // Only a key's last write matters: the change's earlier ops on it would
    // be overwritten by the same change, so no device could ever see them.
    // In key order, as Automerge keeps a map's ops.
    let mut last: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for p in pending {
        last.insert(p.key.as_str(), p.value.as_deref());
    }
    for (k, v) in extra {
        last.insert(k, v);
    }
    doc.transact(|tx| -> Result<()> {
        for (k, v) in &last {
            apply_write(tx, k, *v)?;
        }
        Ok(())
    })
    .map_err(|f| f.error)?;
    Ok(())
}

/// Root-map keys that `patches` touch: the keys to reindex after a remote
/// change of a shard, or the entries to check after one of a catalog.
pub fn changed_keys(patches: &[automerge::Patch]) -> Vec<String> {
    use automerge::{PatchAction, Prop};
    let mut keys: Vec<String> = Vec::new();
    for p in patches.iter().cloned() {
        if p.obj != ROOT {
            if let Some((_, Prop::Map(k))) = p.path.first() {
                keys.push(k.clone());
            }
            continue;
        }
        match p.action {
            PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => keys.push(key),
            PatchAction::Conflict {
                prop: Prop::Map(key),
            }
            | PatchAction::Increment {
                prop: Prop::Map(key),
                ..
            } => keys.push(key),
            _ => {}
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::PatchLog;

    #[test]
    fn shards_are_stable_and_recognised() {
        // Part of the replicated format: pinned.
        assert_eq!(
            shard_doc("b", shard_of("k")).as_str(),
            format!("_kv.b.{:02x}", shard_of("k"))
        );
        assert_eq!(
            bucket_of_shard(&shard_doc("my.bucket", 255)),
            Some("my.bucket")
        );
        assert_eq!(
            bucket_of_shard(&DocId::from_stored("_kv.b.zz".into())),
            None
        );
        assert_eq!(
            bucket_of_shard(&DocId::from_stored("_catalog.00".into())),
            None
        );
    }

    #[test]
    fn keys_and_values_are_checked() {
        assert!(validate_key("").is_err());
        assert!(validate_key("a\0b").is_err());
        assert!(matches!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(DocError::TooLarge { .. })
        ));
        let mut deep = Json::Null;
        for _ in 0..=MAX_DOC_DEPTH {
            deep = Json::Array(vec![deep]);
        }
        assert!(matches!(encode_value(&deep), Err(DocError::TooDeep { .. })));
        assert_eq!(
            encode_value(&serde_json::json!({"a": 1})).unwrap(),
            r#"{"a":1}"#
        );
    }

    /// Two devices put one key concurrently; after a merge both pick the same
    /// winner, `all_values` lists both with the winner first, and a fold of
    /// pending writes plus a reindex after a remote change index the winner.
    #[test]
    fn concurrent_puts_fold_merge_and_reindex_alike() {
        let mut a = Automerge::new();
        let mut b = Automerge::new();
        let pending = vec![
            PendingRecord {
                seq: 1,
                key: "k".into(),
                value: Some("1".into()),
            },
            PendingRecord {
                seq: 2,
                key: "k".into(),
                value: Some("2".into()),
            },
            PendingRecord {
                seq: 3,
                key: "gone".into(),
                value: None,
            },
        ];
        fold(&mut a, &pending, []).unwrap();
        fold(&mut b, &[], [("k", Some("\"b\""))]).unwrap();
        assert_eq!(winner(&a, "k"), Some(serde_json::json!(2)));
        let mut log = PatchLog::active();
        let mut merged = a.clone();
        merged.merge_and_log_patches(&mut b, &mut log).unwrap();
        let mut other = b.clone();
        other.merge(&mut a).unwrap();
        assert_eq!(winner(&merged, "k"), winner(&other, "k"));
        let all = all_values(&merged, "k").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(Some(all[0].clone()), winner(&merged, "k"));
        let keys = changed_keys(&merged.make_patches(&mut log));
        assert_eq!(keys, ["k"]);
        let mut w = WriteSet::new();
        let out =
            stage_reindex(&mut w, "app", "b", &merged, keys.iter().map(String::as_str)).unwrap();
        assert_eq!(out, [("k".to_string(), winner(&merged, "k"))]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn foreign_values_that_are_not_json_show_as_strings() {
        let mut doc = Automerge::new();
        doc.transact(|tx| {
            tx.put(ROOT, "text", "not json")?;
            tx.put(ROOT, "n", 5)
        })
        .unwrap();
        assert_eq!(winner(&doc, "text"), Some(Json::String("not json".into())));
        assert_eq!(winner(&doc, "n"), Some(serde_json::json!(5)));
    }
}
