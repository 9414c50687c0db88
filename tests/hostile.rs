//! Hostile input: every attack tried against masq, one module per area.

mod support;

// `mod relay;` alone would resolve to tests/relay.rs (the crate root is
// tests/hostile.rs), hence the path.
#[path = "hostile/relay.rs"]
mod relay;
