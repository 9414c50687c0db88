//! masq: a local-first, end-to-end encrypted replicated document store.
//!
//! Application data lives as Automerge documents in a fjall keyspace on each of
//! the user's devices, is synced between devices with Automerge's sync
//! protocol sealed under per-pair Double Ratchet sessions, and travels through
//! a blind relay that can read nothing.
//!
//! # What this crate offers
//!
//! - **A native app's handle on its data: [`Client`].** It talks to the
//!   device's running `masq store`, or, where none runs (phones, tablets), is
//!   the device itself ([`client::Mode::Peer`]), paired like one
//!   ([`Client::pair_invite`], [`Client::pair_join`], with a [`pairing::Confirm`]
//!   that shows the user the code).
//! - **A store inside your own process: [`Store`]**, with its key-value
//!   ([`Bucket`]) and document ([`Docs`]) APIs, no network.
//! - **The app protocol: [`api`]**, the requests and answers a `masq store`
//!   serves over its local WebSocket (what [`client::Connection`] speaks).
//! - **A relay: [`relay::start`]**, the server `masq relay` runs.
//! - **The command line: [`cli_main`]**, what the `masq` binary runs.
//!
//! Everything else (the local service, the sync engine, pairing's driver,
//! the CLI's commands, `masq bench`, `masq demo`) is private to this crate;
//! the protocol itself is the `masq-core` crate, the native store
//! `masq-store`, the relay `masq-relay`. This repository's own tests reach a
//! few private parts through the `internals` feature, which is not an API:
//! nothing there is promised to stay.
//!
//! See `docs/ARCHITECTURE.md` for the crate and module map and the data flow.
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

/// The app protocol (from [`masq_core::api`]), run against a native store.
pub mod api {
    pub use masq_core::api::*;
    /// The data executor over a native store's [`App`](crate::App).
    pub mod execute {
        pub use masq_core::api::execute::{op_name, DataApi, ListOptions};
        /// What a data request produced, for a native store.
        pub type Outcome = masq_core::api::Outcome<crate::Subscription>;
        /// Executes a data request in `app` (see [`masq_core::api::execute`](mod@masq_core::api::execute)).
        pub fn execute(app: &crate::App, req: super::Request) -> Result<Outcome, super::ApiError> {
            masq_core::api::execute(app, req)
        }
    }
    pub use execute::execute;
}
pub mod client;

/// Pairing a peer-mode [`Client`] with the user's other devices: what the
/// user is asked, and how an app asks.
pub mod pairing {
    pub use crate::sync::pairing::{confirm_without_asking, CodeCheck, Confirm, Paired};
}

/// The relay (`masq relay`), to run inside another process.
pub mod relay {
    pub(crate) use masq_relay::client;
    pub use masq_relay::{start, RelayConfig, RelayHandle};
}

pub use client::{Client, ClientOptions};
pub use masq_store::doc::Subscription;
pub use masq_store::storage::Durability;
pub use masq_store::{App, Bucket, ChangeOp, DocId, Docs, Error, Event, ListOptions, Origin};
pub use masq_store::{Result, Store, StoreOptions};

/// The `masq` command line, as the binary runs it: parses the process's
/// arguments, runs the command, and returns its exit code.
pub use cli::main as cli_main;

// The crate's own parts, private: the shells around masq-core and
// masq-store.
mod bench;
mod cli;
mod demo;
mod service;
mod sync;

// Short paths to the library crates' modules, for this crate's code only.
pub(crate) use masq_core::crypto;
pub(crate) use masq_relay::{http_head, rate_limit};
pub(crate) use masq_store::{doc, error, kv, storage, store};
pub(crate) mod wire {
    pub(crate) use masq_core::wire::relay_frame;
}

/// Private parts this repository's tests, benches and examples drive
/// directly (a store's pairing driver and sync engine, the service's files
/// and limits, the demo's helpers). Not an API: present only with the
/// `internals` feature, which the root package's dev-dependency on itself
/// turns on for its tests.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::demo::{two_users_comparing_codes, wait_until};
    pub use crate::service::{app_limits, daemon_file, registry};
    pub use crate::sync::pairing;
    /// The sync engine's task, its configuration and its handle.
    pub mod engine {
        pub use crate::sync::engine::*;
        pub use crate::sync::{EngineStatus, SyncEngine};
    }
}
