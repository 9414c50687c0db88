//! What subscribers hear: a change of a document or of a key, who made it,
//! and the lag notice of a subscriber that fell behind. Pushed to apps as
//! `{"sub": S, "event": EVENT}` (see [`Response::Event`](super::Response::Event)).

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::doc::DocId;

/// Where a change came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "device")]
pub enum Origin {
    /// Written on this device.
    Local,
    /// Received from another device (its DeviceId in hex).
    Remote(String),
}

/// Something that changed in an app's data, delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A document changed.
    Doc {
        /// Which document.
        doc: DocId,
        /// Its heads after the change.
        heads: Vec<String>,
        /// The change as Automerge patches rendered to JSON.
        patches: Vec<Json>,
        /// Who made it.
        origin: Origin,
    },
    /// A document was deleted.
    DocDeleted {
        /// Which document.
        doc: DocId,
        /// Who deleted it.
        origin: Origin,
    },
    /// The subscriber fell behind and missed this many events; re-read state.
    Lagged {
        /// How many events were dropped for this subscriber.
        missed: u64,
    },
    /// A key in a bucket changed (value `None`: deleted).
    Kv {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Its new winning value.
        value: Option<Json>,
        /// Who wrote it.
        origin: Origin,
    },
}

/// What a watch or subscription lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Document events (of one document, or all with `None`).
    Doc(Option<DocId>),
    /// KV events of one bucket whose key starts with the prefix.
    Kv {
        /// The bucket.
        bucket: String,
        /// The key prefix ("" for every key).
        prefix: String,
    },
}

impl Filter {
    /// Whether a subscriber with this filter hears `ev` (a lag notice
    /// always passes).
    pub fn matches(&self, ev: &Event) -> bool {
        match (self, ev) {
            (_, Event::Lagged { .. }) => true,
            (Filter::Doc(None), Event::Doc { .. } | Event::DocDeleted { .. }) => true,
            (Filter::Doc(Some(id)), Event::Doc { doc, .. } | Event::DocDeleted { doc, .. }) => {
                id == doc
            }
            (Filter::Kv { bucket, prefix }, Event::Kv { bucket: b, key, .. }) => {
                b == bucket && key.starts_with(prefix.as_str())
            }
            _ => false,
        }
    }
}
