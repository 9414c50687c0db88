//! A document's history as the app protocol shows it, and change hashes in
//! their hex form.

use automerge::{Automerge, ChangeHash};
use serde::Serialize;

/// One entry of a document's history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryEntry {
    /// Change hash (hex).
    pub hash: String,
    /// Actor id (hex).
    pub actor: String,
    /// Sequence number of the change for its actor.
    pub seq: u64,
    /// Wall-clock time the author claimed, seconds since the epoch (0 if none).
    pub time: i64,
    /// Commit message, if any.
    pub message: Option<String>,
    /// Hashes of the changes it depends on.
    pub deps: Vec<String>,
}

/// Every change of `doc`, in causal order.
pub fn history(doc: &Automerge) -> Vec<HistoryEntry> {
    doc.get_changes(&[])
        .iter()
        .map(|c| HistoryEntry {
            hash: c.hash().to_string(),
            actor: c.actor_id().to_hex_string(),
            seq: c.seq(),
            time: c.timestamp(),
            message: c.message().map(str::to_string),
            deps: c.deps().iter().map(|h| h.to_string()).collect(),
        })
        .collect()
}

/// Hex form of heads.
pub fn heads_hex(heads: &[ChangeHash]) -> Vec<String> {
    heads.iter().map(|h| h.to_string()).collect()
}

/// Parses hex change hashes; the first that does not parse is returned.
pub fn parse_heads(heads: &[String]) -> Result<Vec<ChangeHash>, String> {
    heads
        .iter()
        .map(|h| h.parse::<ChangeHash>().map_err(|_| h.clone()))
        .collect()
}
