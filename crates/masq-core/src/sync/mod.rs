//! The parts of the device-to-device sync protocol that are decisions, not
//! I/O: how a large payload is cut into envelopes and put back together
//! ([`fragments`]), and who answers whose handshake and when an unanswered
//! one is sent again ([`handshake_rules`]), what goes into a batch
//! ([`batching`]), when a document's sync state restarts ([`doc_states`]),
//! the whole per-peer session as one state machine ([`link`]), who is in
//! the user's device group and how a removal spreads ([`membership`]), how two devices pair
//! with the users' yes ([`pairing`]), which app's
//! documents may flow with which peer ([`prefs`]), and what a received
//! batch and each of its messages do ([`receive`]: `sort_batch`,
//! `apply_message`). The native engine (the `masq` package's private
//! `src/sync/engine.rs`) and the page (`masq_web::sync`) drive them with
//! their sockets, clocks and disks; they are tested here without any of
//! those.
//!
//! Architecture invariant: no clock and no I/O. Time comes in as a
//! [`Duration`](std::time::Duration) since any fixed instant the caller
//! chooses, so the same rules run in a browser.

pub mod batching;
pub mod doc_states;
pub mod fragments;
pub mod handshake_rules;
pub mod link;
pub mod membership;
pub mod pairing;
pub mod prefs;
pub mod receive;
