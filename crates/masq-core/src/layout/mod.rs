//! Record layouts: which records, under which keys of which
//! [`Table`](crate::records::Table), hold a store's data. Both shells (fjall
//! natively, IndexedDB in the browser) store exactly these bytes, so a layout
//! change here is a storage format change everywhere
//! (`tests/on_disk_compat.rs` holds the native one to a committed fixture).
//!
//! - [`doc_chunks`]: a document as snapshot + incremental chunks + metadata.
//! - [`kv_index`]: the materialized winner of every key.
//! - [`kv_pending`]: local KV writes waiting to be folded into their shard.
//! - [`meta`]: the device's identity, peers, sessions, sync states, notes.
//!
//! Architecture invariant: layouts know bytes and keys only. They never decode
//! Automerge, and they never read: the shell reads, hands the bytes over, and
//! commits the [`WriteSet`](crate::records::WriteSet)s they fill.

pub mod doc_chunks;
pub mod kv_index;
pub mod kv_pending;
pub mod meta;
