//! The store's error type: one enum with a clear, one-line message per failure.

use std::path::PathBuf;

/// Result alias used across the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store, documents and key-value API.
///
/// Messages are single lines meant to be shown to a person as they are
/// (the CLI prints them after `error: `).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory is held by another process (usually a running `masq store`).
    #[error("data directory {0} is locked by a running store (stop it, or talk to it instead)")]
    Locked(PathBuf),
    /// No document with that id in this app.
    #[error("unknown document {0}")]
    UnknownDoc(String),
    /// The document was deleted (its tombstone is kept so the deletion syncs).
    #[error("document {0} was deleted")]
    DocDeleted(String),
    /// A document id string does not parse.
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
    /// A value, key or message exceeds a documented limit.
    #[error("{what} too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A document (or a value written into one) nests objects deeper than
    /// [`MAX_DOC_DEPTH`](crate::doc::json::MAX_DOC_DEPTH) levels below its
    /// root. However the document arrived (a change, an import, sync), it is
    /// answered with this error instead of being walked.
    #[error("{what} is nested deeper than {limit} levels (the limit for every document)")]
    TooDeep {
        /// What is too deep: "document ID", "value", "path", ...
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
    /// A change operation is malformed.
    #[error("invalid operation: {0}")]
    BadOp(String),
    /// Heads given for time travel are not in the document.
    #[error("unknown heads for document {0}")]
    UnknownHeads(String),
    /// Stored bytes for a document could not be decoded.
    #[error("document {doc} is corrupt on disk: {reason}")]
    Corrupt {
        /// The document whose chunk failed to load.
        doc: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// Automerge rejected an operation or an input.
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// The disk holding the data directory is full. Nothing acknowledged is
    /// lost; writes are refused until space is freed and the store reopened.
    #[error("the disk holding {0} is full: free some space and restart the store (acknowledged writes are safe)")]
    DiskFull(PathBuf),
    /// The data directory is on a read-only file system.
    #[error("data directory {0} is on a read-only file system: writes are refused")]
    ReadOnly(PathBuf),
    /// The data directory could be read or changed by other local users;
    /// the store refuses to use it (it holds the device's secret key).
    #[error("data directory {path} is not private: {reason}")]
    InsecureDataDir {
        /// The data directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The storage engine failed (I/O error, ...).
    #[error("storage: {0}")]
    Storage(String),
    /// Plain I/O failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A packet came from a device that is not paired with this store.
    #[error("packet from a device that is not paired")]
    UnknownPeer,
    /// A paired device's packet broke the sync protocol (see
    /// [`LinkError`](masq_core::sync::link::LinkError)).
    #[error("{0}")]
    Link(#[from] masq_core::sync::link::LinkError),
    /// A membership entry (introduction or removal) was refused, or a
    /// device to remove is not paired (see
    /// [`MembershipError`](masq_core::sync::membership::MembershipError)).
    #[error("{0}")]
    Membership(#[from] masq_core::sync::membership::MembershipError),
    /// JSON encoding or decoding failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<fjall::Error> for Error {
    fn from(e: fjall::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<masq_core::doc::DocError> for Error {
    /// The core's document errors keep their app protocol codes: each maps
    /// to the variant of the same name.
    fn from(e: masq_core::doc::DocError) -> Self {
        use masq_core::doc::DocError;
        match e {
            DocError::BadDocId(id) => Error::BadDocId(id),
            DocError::BadPath { path, reason } => Error::BadPath { path, reason },
            DocError::WrongType {
                path,
                expected,
                found,
            } => Error::WrongType {
                path,
                expected,
                found,
            },
            DocError::TooDeep { what, limit } => Error::TooDeep { what, limit },
            DocError::InvalidName { what, name, rule } => Error::InvalidName { what, name, rule },
            DocError::TooLarge { what, size, limit } => Error::TooLarge { what, size, limit },
            DocError::Corrupt { doc, reason } => Error::Corrupt { doc, reason },
            DocError::Automerge(e) => Error::Automerge(e),
            DocError::Json(e) => Error::Json(e),
        }
    }
}

impl Error {
    /// A stable machine-readable code for the error (used by the app protocol and the CLI).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Locked(_) => "locked",
            Error::UnknownDoc(_) => "unknown_doc",
            Error::DocDeleted(_) => "doc_deleted",
            Error::BadDocId(_) => "bad_doc_id",
            Error::BadPath { .. } => "bad_path",
            Error::WrongType { .. } => "wrong_type",
            Error::TooLarge { .. } => "too_large",
            Error::TooDeep { .. } => "too_deep",
            Error::InvalidName { .. } => "invalid_name",
            Error::BadOp(_) => "bad_op",
            Error::UnknownHeads(_) => "unknown_heads",
            Error::Corrupt { .. } => "corrupt",
            Error::Automerge(_) => "automerge",
            Error::DiskFull(_) => "disk_full",
            Error::ReadOnly(_) => "read_only",
            Error::InsecureDataDir { .. } => "insecure_data_dir",
            Error::Storage(_) => "storage",
            Error::Io(_) => "io",
            Error::Json(_) => "json",
            Error::UnknownPeer => "unknown_peer",
            Error::Link(_) => "protocol",
            Error::Membership(masq_core::sync::membership::MembershipError::NotMember(_)) => {
                "not_found"
            }
            Error::Membership(_) => "membership",
        }
    }
}
