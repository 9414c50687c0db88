//! Document ids: user documents get 128 random bits in base58; the store's
//! own documents (catalog shards, KV shards) have ids that start with `_`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::DocError;

/// A document id: 22 base58 characters (128 random bits) for user documents;
/// internal documents (catalog, KV shards) start with `_`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DocId(String);

/// Prefix of the catalog shard documents' ids (`_catalog.<two hex digits>`).
pub const CATALOG_PREFIX: &str = "_catalog.";

impl DocId {
    /// A fresh random id.
    pub fn random() -> Self {
        let bytes = crate::crypto::random_bytes::<16>();
        DocId(bs58::encode(bytes.as_ref()).into_string())
    }

    /// Parses a user-visible id (random ids only; internal ids are refused).
    pub fn parse(s: &str) -> Result<Self, DocError> {
        let ok = (16..=24).contains(&s.len())
            && bs58::decode(s)
                .into_vec()
                .map(|v| v.len() == 16)
                .unwrap_or(false);
        if ok {
            Ok(DocId(s.to_string()))
        } else {
            Err(DocError::BadDocId(s.to_string()))
        }
    }

    /// Accepts any id, including internal ones (used by sync for catalog entries).
    pub fn parse_any(s: &str) -> Result<Self, DocError> {
        if s.starts_with('_') && s.len() <= 200 && !s.contains('\0') {
            Ok(DocId(s.to_string()))
        } else {
            Self::parse(s)
        }
    }

    /// The id of the catalog shard that lists `doc`: `_catalog.<BLAKE3(doc)[0] as hex>`.
    /// Sharding keeps each catalog document small (a store with 100k documents
    /// has ~400 entries per shard), so creating a document stays cheap.
    pub fn catalog_for(doc: &DocId) -> Self {
        DocId(format!(
            "{CATALOG_PREFIX}{:02x}",
            blake3::hash(doc.0.as_bytes()).as_bytes()[0]
        ))
    }

    /// An internal id (callers guarantee the `_` prefix and no NUL): the
    /// store's own documents, never one an app names.
    pub fn internal(s: String) -> Self {
        debug_assert!(s.starts_with('_'));
        DocId(s)
    }

    /// An id read back from the store's own records, where only validated
    /// ids are ever written.
    pub fn from_stored(s: String) -> Self {
        DocId(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({})", self.0)
    }
}

/// Whether an id names a catalog shard.
pub fn is_catalog(id: &DocId) -> bool {
    id.0.starts_with(CATALOG_PREFIX)
}

/// Whether an id names an internal document (catalog, KV shard).
pub fn is_internal(id: &DocId) -> bool {
    id.0.starts_with('_')
}
