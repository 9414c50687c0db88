//! The proofs that answer the relay's challenge (see `docs/protocol.md`,
//! "Relay authentication"): a device proves its X25519 key, a pairing
//! connection proves its rendezvous slot key, each over the relay's
//! per-connection challenge (`nonce`, `relay_public`). Here, not in the relay
//! crate, so that every client, the page's wasm build included, computes
//! the same bytes as the relay checks.

/// The authentication proof context.
pub const AUTH_CONTEXT: &str = "masq 2026-11 relay auth v1";
/// The rendezvous slot-key proof context (same construction as
/// [`auth_proof`], another domain, so neither proof stands for the other).
pub const SLOT_CONTEXT: &str = "masq 2026-11 rendezvous slot v1";

/// Proves the slot key to the relay: `BLAKE3-keyed(derive_key(SLOT_CONTEXT, DH(slot secret, relay_public)), nonce || relay_public || slot_public)`.
pub fn slot_proof(
    dh: &[u8; 32],
    nonce: &[u8; 32],
    relay_public: &[u8; 32],
    slot_public: &[u8; 32],
) -> [u8; 32] {
    proof(SLOT_CONTEXT, dh, nonce, relay_public, slot_public)
}

/// Computes the device's answer to a challenge: `BLAKE3-keyed(derive_key(AUTH_CONTEXT, dh), nonce || relay_public || device_public)`.
pub fn auth_proof(
    dh: &[u8; 32],
    nonce: &[u8; 32],
    relay_public: &[u8; 32],
    device_public: &[u8; 32],
) -> [u8; 32] {
    proof(AUTH_CONTEXT, dh, nonce, relay_public, device_public)
}

fn proof(
    context: &str,
    dh: &[u8; 32],
    nonce: &[u8; 32],
    relay_public: &[u8; 32],
    public: &[u8; 32],
) -> [u8; 32] {
    let key = zeroize::Zeroizing::new(blake3::derive_key(context, dh));
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(nonce);
    h.update(relay_public);
    h.update(public);
    *h.finalize().as_bytes()
}
