//! masq-store: the native store. Automerge documents and key-value buckets
//! kept in one fjall database per device, with one write path, group commit,
//! a bounded document cache and the KV folder thread.
//!
//! - [`store`]: [`Store`] and [`App`]: the lower layer: the cache, the
//!   locks, the single write path `commit_docs`, events. Knows neither the
//!   document nor the key-value API.
//! - `fold_queue`: which shard documents have pending key-value writes, and
//!   the folder thread's signals (no documents, no store).
//! - [`open`]: `Store::open`: the database, what the last run left pending,
//!   and the folder thread.
//! - [`doc`]: the document API ([`Docs`]) and the catalog; the JSON and
//!   change-op logic itself is `masq_core::doc`.
//! - [`kv`]: the key-value API ([`Bucket`]), shards, index, conflicts, watch,
//!   and the write-behind folder.
//! - [`storage`]: the fjall database, its keyspaces and durability.
//! - [`sync`]: paired devices, sessions and sync states in the database, and
//!   `SyncCore`, the Automerge sync protocol over this store's documents.
//! - [`error`]: the store's error type, whose codes the app protocol uses.
//! - [`data_api`]: the store as the core's `DataApi`, so app requests run
//!   through the core's one executor.
//!
//! Architecture invariant: no sockets, no relay, no app protocol framing. The
//! network shells (`masq`'s sync engine, local service, client) use this
//! crate; it never uses them.
#![warn(missing_docs)]

pub mod data_api;
pub mod doc;
pub mod error;
mod fold_queue;
pub mod kv;
pub mod open;
pub mod storage;
pub mod store;
pub mod sync;

pub use doc::{ChangeOp, DocId, Docs};
pub use error::{Error, Result};
pub use kv::{Bucket, ListOptions};
pub use store::{App, Event, Origin, Store, StoreOptions};
