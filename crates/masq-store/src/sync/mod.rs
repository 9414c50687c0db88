//! The store's side of device sync: what it keeps about paired devices
//! ([`peers`]) and the Automerge sync protocol over its documents
//! ([`core`]). The native sync engine (the `masq` package's private
//! `src/sync/engine.rs`) drives them.

pub mod core;
pub mod peers;
