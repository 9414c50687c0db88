//! Documents as JSON: ids, reading an Automerge document as JSON
//! ([`json`]), and changing it by JSON-pointer operations ([`ops`]).
//!
//! Architecture invariant: this is the logic of documents only. It knows
//! nothing of where a document is kept (the store's persistence), who may
//! touch it (apps and permissions), or how it travels (sync).

pub mod id;
pub mod json;
pub mod ops;

pub use id::{is_catalog, is_internal, DocId, CATALOG_PREFIX};
pub use ops::ChangeOp;

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
    /// Automerge refused the operation.
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

/// The result of a document operation.
pub type Result<T, E = DocError> = std::result::Result<T, E>;
