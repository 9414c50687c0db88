//! The blind relay (`masq relay`): forwards sealed envelopes between
//! authenticated devices, tracks presence and hosts pairing rendezvous slots.
//! It stores nothing and can read nothing.
//!
//! - [`config`]: every limit and timeout, as a named constant, and the auth proof.
//! - [`server`]: the WebSocket server (plus `/healthz`, `/metrics`), one
//!   module per job: `accept` (accept loop, TLS, HTTP vs upgrade),
//!   `connection` (one device's connection: register, act on its frames,
//!   unregister), `auth` (challenge and proofs), `writer` (a connection's
//!   writer task), `routing` (queues, allow lists, senders' shares, the
//!   connection table, refusals), `presence` (watch lists, pending presence
//!   states), `rendezvous` (pairing slots), `cluster_events` (what other
//!   nodes ask of this node's connections), `hub` (the shared state),
//!   `metrics` (counters and their text), `kill` and `ws` (stopping a
//!   connection; the WebSocket's writes and close frames).
//! - [`client`]: the device side (a relay URL may list several nodes, comma-separated).
//! - [`cluster`]: several relay nodes as one, over Redis pub/sub (`--cluster`).
//! - [`tls`]: the server's rustls configuration and the devices' trust roots.
//! - [`http_head`]: the HTTP before a WebSocket upgrade (shared with the
//!   store's local service).
//! - [`rate_limit`]: the token bucket behind the per-device frame rate
//!   (and the service's per-app request rate).
//!
//! Frame bytes live in `masq_core::wire::relay_frame`.
//!
//! Architecture invariant: the relay never sees a plaintext, never stores
//! a payload and knows nothing of documents, storage or the sync protocol
//! above the frames. This crate knows nothing of the CLI (`masq relay` and
//! `masq bench relay` are the `masq` package's).
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod config;
pub mod http_head;
pub mod rate_limit;
pub mod server;
pub mod tls;

pub use config::RelayConfig;
pub use server::{start, RelayHandle};
