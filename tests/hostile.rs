//! The attacks tried against masq, one module per surface, each a test that
//! failed on the code before M13 and must pass now. `docs/reliability.md`
//! ("Hostile input") lists every test with what it tries and what it found.
//!
//! - [`store`]: documents too deep to walk (from an app, an import, a paired
//!   device), data directory permissions, closing stores.
//! - [`service`]: the local service: unapproved origins flooding connections,
//!   `Host` tricks, native tokens from web pages, secrets in argv and links,
//!   descriptor floods.
//! - [`relay`]: strangers flooding a device, oversized watch lists, squatted
//!   pairing slots, low-order X25519 keys (relay auth, handshake, ratchet,
//!   pairing), allow lists across cluster nodes.
#![allow(clippy::unwrap_used)]

mod support;

#[path = "hostile/relay.rs"]
mod relay;
#[path = "hostile/service.rs"]
mod service;
#[path = "hostile/store.rs"]
mod store;
