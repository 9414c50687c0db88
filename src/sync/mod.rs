//! Device sync: Automerge's sync protocol per (peer, document), sealed with the
//! pair's Double Ratchet and carried by the relay.
//!
//! - [`wire`]: byte formats devices exchange (pure).
//! - [`peers`]: identity, paired devices, sessions and sync states in the keyspace.
//! - [`core`]: the sans-I/O sync logic over a [`Store`](crate::Store).
//! - [`engine`]: the tokio task around the core's device: the relay
//!   connection, timers, change notices. [`handle`]: [`SyncEngine`], what
//!   its owners hold. `slot`: [`EngineSlot`], an engine started once a relay
//!   is known. `status`: [`EngineStatus`], what the engine publishes.
//! - [`transport`]: the relay connection's frames as events.

pub use masq_store::sync::{core, peers};
pub mod engine;
pub mod handle;
mod slot;
mod status;

pub use handle::SyncEngine;
pub use slot::EngineSlot;
pub use status::EngineStatus;

pub use masq_core::wire::invite;
pub mod pairing;

pub mod transport;

pub use masq_core::wire::device as wire;
