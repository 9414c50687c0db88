//! Known-answer tests: fixed keys in, committed bytes out
//! (`crates/masq-core/vectors/crypto.json`, checked by
//! `masq_core::crypto::known_answers`, which the browser build runs too).
//! Any change to a KDF, domain string, handshake or envelope byte makes this
//! fail — a wire-format change must be deliberate (bump a version and update
//! `docs/crypto.md`).
//!
//! To see the computed answers after a deliberate change:
//! `MASQ_KAT_PRINT=1 cargo test --test crypto_kat -- --nocapture`.
#![allow(clippy::unwrap_used)]

use masq_core::crypto::known_answers;

#[test]
fn crypto_known_answers_match_the_vector_file() {
    if std::env::var("MASQ_KAT_PRINT").is_ok() {
        for (name, value) in known_answers::compute().unwrap() {
            println!("{name}: {value}");
        }
        return;
    }
    assert_eq!(known_answers::check(), Ok(30));
}
