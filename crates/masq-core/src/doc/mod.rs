//! Documents as JSON: ids, reading an Automerge document as JSON
//! ([`json`]), and changing it by JSON-pointer operations ([`ops`]).
//!
//! Architecture invariant: this is the logic of documents only. It knows
//! nothing of where a document is kept (the store's persistence), who may
//! touch it (apps and permissions), or how it travels (sync).

pub mod catalog;
pub mod history;
pub mod id;
pub mod json;
pub mod ops;
pub mod stored;

pub use catalog::{catalog_entry, put_catalog_entry, CATALOG_DELETED, CATALOG_DOC, CATALOG_KV};
pub use id::{is_catalog, is_internal, DocId, CATALOG_PREFIX};
pub use ops::ChangeOp;

/// A fresh Automerge actor id for a store's or a page's changes (fresh on
/// every open, so a lost write can never make it reuse an (actor, seq)),
/// from `crypto::random_bytes`, so a simulation's seed decides it too.
pub fn new_actor_id() -> automerge::ActorId {
    automerge::ActorId::from(&crate::crypto::random_bytes::<16>()[..])
}

/// Why a document operation was refused. The store maps each variant to
/// the app protocol's error code of the same name (`bad_path`, ...).
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// A document id is neither a random id nor an internal one.
    #[error("invalid document id {0:?}")]
    BadDocId(String),
    /// A JSON path does not exist or does not fit the operation.
    #[error("bad path {path:?}: {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The value at a path has another type than the operation needs.
    #[error("wrong type at {path:?}: expected {expected}, found {found}")]
    WrongType {
        /// The path as given.
        path: String,
        /// What the operation needs.
        expected: &'static str,
        /// What is there.
        found: String,
    },
    /// A document, or a value written into one, nests deeper than
    /// [`json::MAX_DOC_DEPTH`] levels below its root.
    #[error("{what} is nested deeper than {limit} levels (the limit for every document)")]
    TooDeep {
        /// What is too deep: "document", "value", "path", ...
        what: String,
        /// The limit.
        limit: usize,
    },
    /// An app, bucket or key name breaks the naming rules.
    #[error("invalid {what} {name:?}: {rule}")]
    InvalidName {
        /// "app", "bucket" or "key".
        what: &'static str,
        /// The rejected name.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A value or key exceeds a documented limit.
    #[error("{what} too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Stored records of a document do not decode (read back by the shell
    /// and handed to the core).
    #[error("document {doc} is corrupt on disk: {reason}")]
    Corrupt {
        /// The document whose records failed to decode.
        doc: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// Automerge refused the operation.
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// JSON encoding or decoding failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl DocError {
    /// The app protocol's stable code for the error (the same as the native
    /// store's error of the same name).
    pub fn code(&self) -> &'static str {
        match self {
            DocError::BadDocId(_) => "bad_doc_id",
            DocError::BadPath { .. } => "bad_path",
            DocError::WrongType { .. } => "wrong_type",
            DocError::TooDeep { .. } => "too_deep",
            DocError::InvalidName { .. } => "invalid_name",
            DocError::TooLarge { .. } => "too_large",
            DocError::Corrupt { .. } => "corrupt",
            DocError::Automerge(_) => "automerge",
            DocError::Json(_) => "json",
        }
    }
}

/// Largest Automerge file a store imports (`doc.import`).
pub const MAX_IMPORT_BYTES: usize = 256 * 1024 * 1024;
/// Largest serialized change (all ops of one `doc.change` call) accepted.
pub const MAX_CHANGE_BYTES: usize = 16 * 1024 * 1024;

/// The result of a document operation.
pub type Result<T, E = DocError> = std::result::Result<T, E>;
