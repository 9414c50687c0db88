//! masq: a local-first, end-to-end encrypted replicated document store.
//!
//! Application data lives as Automerge documents in a fjall keyspace on each of
//! the user's devices ([`store`]), is synced between devices with Automerge's sync
//! protocol ([`sync`]) sealed under per-pair Double Ratchet sessions ([`crypto`]),
//! and travels through a blind relay ([`relay`]) that can read nothing.
//!
//! See `docs/ARCHITECTURE.md` for the module map and data flow.
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

/// The app protocol (from [`masq_core::api`]), run against a native store.
pub mod api {
    pub use masq_core::api::*;
    /// The data executor over a native store's [`App`](crate::App).
    pub mod execute {
        pub use masq_core::api::execute::{op_name, DataApi, ListOptions};
        /// What a data request produced, for a native store.
        pub type Outcome = masq_core::api::Outcome<crate::doc::Subscription>;
        /// Executes a data request in `app` (see [`masq_core::api::execute`]).
        pub fn execute(app: &crate::App, req: super::Request) -> Result<Outcome, super::ApiError> {
            masq_core::api::execute(app, req)
        }
    }
    pub use execute::execute;
}
pub mod client;
pub use masq_core::crypto;
pub use masq_relay as relay;
pub use masq_relay::{http_head, rate_limit};
pub use masq_store::{doc, error, kv, storage, store};
pub mod service;
/// Relay frames (the relay's wire format) and pairing messages, from
/// [`masq_core::wire`].
pub mod wire {
    pub use masq_core::wire::{pairing, relay_frame};
}

pub use client::{Client, ClientOptions};
pub use doc::{ChangeOp, DocId, Docs};
pub use error::{Error, Result};
pub use kv::{Bucket, ListOptions};
pub use store::{App, Event, Origin, Store, StoreOptions};
pub mod bench;
pub mod cli;
pub mod demo;
pub mod sync;
