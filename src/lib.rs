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

pub mod crypto;
pub mod relay;
pub mod wire;
