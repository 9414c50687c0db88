//! The catalog: per app, Automerge documents (256 shards, `_catalog.00` …
//! `_catalog.ff`, see [`DocId::catalog_for`]) whose roots map every document
//! id of the app to its state: [`CATALOG_DOC`], [`CATALOG_DELETED`] or
//! [`CATALOG_KV`]. Because the catalog is a replicated document like any
//! other, new documents and deletions propagate by sync.

use automerge::{transaction::Transactable, Automerge, ReadDoc, ScalarValue, Value, ROOT};

use super::{DocId, Result};

/// The catalog entry value for a live user document.
pub const CATALOG_DOC: &str = "doc";
/// The catalog entry value for a deleted document (tombstone).
pub const CATALOG_DELETED: &str = "deleted";
/// The catalog entry value for a key-value shard.
pub const CATALOG_KV: &str = "kv";

/// Reads a catalog entry.
pub fn catalog_entry(catalog: &Automerge, id: &str) -> Option<String> {
    match catalog.get(ROOT, id) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Writes a catalog entry. Catalog state wins in this order when devices
/// disagree: a tombstone beats everything, so a concurrent edit never
/// resurrects a deleted document.
pub fn put_catalog_entry(tx: &mut impl Transactable, id: &DocId, state: &str) -> Result<()> {
    tx.put(ROOT, id.as_str(), state)?;
    Ok(())
}
