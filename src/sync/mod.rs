//! Device sync: Automerge's sync protocol per (peer, document), sealed with the
//! pair's Double Ratchet and carried by the relay.
//!
//! - [`wire`]: byte formats devices exchange (pure).
//! - [`peers`]: identity, paired devices, sessions and sync states in the keyspace.
//! - [`core`]: the sans-I/O sync logic over a [`Store`](crate::Store).

pub use masq_store::sync::{core, peers};
pub mod engine;
mod slot;
mod status;

pub use masq_core::wire::invite;
pub mod pairing;

pub mod transport;

pub use masq_core::wire::device as wire;
