//! Key derivation: every derivation is BLAKE3 with a distinct domain string
//! (`derive_key` contexts) or keyed BLAKE3 with a distinct one-byte input, so
//! no two uses of one key can collide. See `docs/crypto.md` for the table.

use zeroize::Zeroizing;

/// Root KDF context: `(rk, dh) → (rk', ck)`.
pub const ROOT_CONTEXT: &str = "masq 2026-11 ratchet root v1";
/// Message-key expansion context: `mk → (aead key, nonce)`.
pub const MESSAGE_CONTEXT: &str = "masq 2026-11 message key v1";
/// Handshake root context: `(dh1..dh4, transcript) → session root`.
pub const HANDSHAKE_ROOT_CONTEXT: &str = "masq 2026-11 handshake root v1";
/// Handshake confirmation-key context.
pub const HANDSHAKE_CONFIRM_CONTEXT: &str = "masq 2026-11 handshake confirm v1";
/// Initiator proof context (authenticates the init message to the responder).
pub const HANDSHAKE_INIT_CONTEXT: &str = "masq 2026-11 handshake init v1";
/// Refusal-key context: `DH(s_a, S_b) → key` of the MAC on a refused init's
/// answer (only the two devices can make or check it).
pub const HANDSHAKE_REFUSAL_CONTEXT: &str = "masq 2026-12 handshake refusal v1";

/// Chain KDF input byte for the message key.
pub const CHAIN_MESSAGE_BYTE: u8 = 0x01;
/// Chain KDF input byte for the next chain key.
pub const CHAIN_NEXT_BYTE: u8 = 0x02;

/// A 32-byte secret that is wiped on drop.
pub type Key = Zeroizing<[u8; 32]>;

fn xof64(context: &str, parts: &[&[u8]]) -> Zeroizing<[u8; 64]> {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    let mut out = Zeroizing::new([0u8; 64]);
    h.finalize_xof().fill(out.as_mut());
    out
}

fn split(okm: &[u8; 64]) -> (Key, Key) {
    let mut a = Zeroizing::new([0u8; 32]);
    let mut b = Zeroizing::new([0u8; 32]);
    a.copy_from_slice(&okm[..32]);
    b.copy_from_slice(&okm[32..]);
    (a, b)
}

/// Root KDF: `BLAKE3-derive_key(ROOT_CONTEXT, rk || dh)` read as 64 bytes → (new root key, chain key).
pub fn kdf_rk(rk: &[u8; 32], dh: &[u8; 32]) -> (Key, Key) {
    split(&xof64(ROOT_CONTEXT, &[rk, dh]))
}

/// Chain KDF: `(BLAKE3-keyed(ck, 0x02), BLAKE3-keyed(ck, 0x01))` → (next chain key, message key).
pub fn kdf_ck(ck: &[u8; 32]) -> (Key, Key) {
    let next = Zeroizing::new(*blake3::keyed_hash(ck, &[CHAIN_NEXT_BYTE]).as_bytes());
    let mk = Zeroizing::new(*blake3::keyed_hash(ck, &[CHAIN_MESSAGE_BYTE]).as_bytes());
    (next, mk)
}

/// Expands a message key into the XChaCha20-Poly1305 key and 24-byte nonce:
/// `BLAKE3-derive_key(MESSAGE_CONTEXT, mk)` read as 56 bytes.
pub fn message_key_material(mk: &[u8; 32]) -> (Key, [u8; 24]) {
    let okm = xof64(MESSAGE_CONTEXT, &[mk]);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&okm[..32]);
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&okm[32..56]);
    (key, nonce)
}

/// Derives a 32-byte key under `context` from the concatenation of `parts`.
pub fn derive(context: &str, parts: &[&[u8]]) -> Key {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    Zeroizing::new(*h.finalize().as_bytes())
}
