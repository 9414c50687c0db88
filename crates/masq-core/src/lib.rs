//! masq-core: the protocol and data logic every masq device runs, native
//! store or browser page.
//!
//! - [`api`]: the app protocol's requests, answers and events, and the data
//!   executor every store answers through ([`api::DataApi`]).
//! - [`crypto`]: identities, KDFs, handshake, Double Ratchet, envelopes, the
//!   pairing channel.
//! - [`wire`]: every byte format: relay frames, device payloads, invites.
//! - [`doc`]: documents as JSON and JSON-pointer change operations.
//! - [`records`]: abstract persistence: the store's tables, and writes to
//!   them as data ([`WriteSet`](records::WriteSet)) that a shell commits atomically.
//! - [`layout`]: which records, under which keys, hold documents, the KV
//!   index, pending KV writes and the device's own facts.
//! - [`kv`]: the key-value API's logic over shard documents.
//! - [`names`]: the naming rule for apps and buckets.
//! - [`sync`]: the sync protocol's rules that need no I/O: the per-peer link
//!   state machine (handshakes, replays, fragments, tie-break and resend),
//!   batching, per-document sync states, a received batch's checks, order
//!   and application, the device group's membership log, pairing and sync
//!   preferences.
//!
//! Architecture invariant: this crate does no I/O. No tokio, no fjall, no
//! sockets, no threads, no clock (callers pass the time in), randomness only
//! through `getrandom`. It builds for `wasm32-unknown-unknown`
//! (`cargo build -p masq-core --target wasm32-unknown-unknown`), which `.ci/run`
//! checks, so that the browser (M11) links the very code the native stores run.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod crypto;
pub mod device;
pub mod doc;
pub mod kv;
pub mod layout;
pub mod names;
pub mod records;
pub mod sync;
pub mod wire;
